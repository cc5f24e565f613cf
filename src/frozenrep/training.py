"""The one training loop every task head uses.

AdamW over the parameters that require gradients (never the frozen backbone), linear warm-up
then a cosine or step schedule, AMP on GPU, gradient clipping, and a resumable state file
(model, optimizer, scheduler, scaler, RNG, step) written atomically every ``checkpoint_every``
steps: a job killed at any point and run again continues where its last state left off. On a stop
signal (SIGTERM: preemption, a cancelled job; SIGUSR1: SLURM's warning ahead of the time limit)
the loop writes the state at the end of the step it is in and stops, so nothing is lost.

Under ``torchrun`` (an initialised process group) the same loop runs data-parallel: the model is
wrapped in PyTorch's DistributedDataParallel, each step's batch (``batch_size``, the same for any
number of processes) is split between the ranks, and only rank 0 writes state files and logs
metrics. The state does not depend on the number of processes: a job may resume on other nodes.
"""

from __future__ import annotations

import math
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from frozenrep.backbones import BackboneAdapter, trainable_state_dict
from frozenrep.io import atomic_path
from frozenrep.progress import Progress, log
from frozenrep.randomness import batch_seeds
from frozenrep.runtime import StopSignals, Stopped, barrier, distributed, ignore_stop_signals, mean_over_ranks

STATE_FILE = "state.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a config that trains nothing)."""


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TrainConfig:
    """Optimisation settings: the keys of ``<task>.train`` (defaults in the profile schema)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str  # cosine | poly | step | constant
    step_milestones: tuple[float, ...]  # fractions of steps where "step" divides lr by 10
    backbone_lr_mult: float  # fine-tune mode: backbone lr = lr * this
    grad_clip: float  # max gradient norm; 0 disables clipping
    checkpoint_every: int
    log_every: int
    amp: bool  # mixed precision on CUDA (ignored on CPU)
    num_workers: int


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return 0.1 ** sum(step >= m * cfg.steps for m in cfg.step_milestones)
    if cfg.schedule == "poly":  # Mask2Former / DeepLab: (1 - progress) ** 0.9
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return (1 - min(step - cfg.warmup_steps, span) / span) ** 0.9
    if cfg.schedule == "cosine":
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
    raise ValueError(f"unknown schedule {cfg.schedule!r}: use cosine, poly, step or constant")


class ResumableBatchSampler(Sampler):
    """Batches for steps ``start..steps-1``; each index comes with its own augmentation seed.

    The sample order of epoch ``e`` depends only on ``(seed, e)``, so batch ``k`` is the same
    whether the run started at step 0 or resumed at step ``k``. With ``world > 1`` the batch is the
    global one and this rank yields its share (every ``world``-th sample from ``rank``), so the
    ranks together see exactly what one process with the whole batch would.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: int, steps: int,
                 rank: int = 0, world: int = 1) -> None:
        if num_samples == 0:
            raise TrainingError("the training set is empty")
        if num_samples < world:
            raise TrainingError(f"the training set has {num_samples} samples, fewer than the {world} processes")
        self.n, self.batch_size = num_samples, min(batch_size, num_samples)
        self.seed, self.start, self.steps = seed, start, steps
        self.rank, self.world = rank, world
        self.per_epoch = self.n // self.batch_size

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        """Per step, ``(index, sample seed, step)`` for each of this rank's samples."""
        perm, perm_epoch = None, -1
        for step in range(self.start, self.steps):
            epoch, pos = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
                perm_epoch = epoch
            chunk = perm[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()
            batch = [(i, (self.seed * 1_000_003 + step) * 64 + j, step) for j, i in enumerate(chunk)]
            yield batch[self.rank::self.world]


class KeyedDataset(Dataset):
    """``dataset[(index, sample seed)]`` together with the sample's seed.

    A dataset whose samples change over the run (``keyed_by_step = True``, a pretraining curriculum)
    is asked for ``dataset[(index, sample seed, step)]``; the step comes from the sampler, so a
    resumed run sees what an uninterrupted one would.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.with_step = bool(getattr(dataset, "keyed_by_step", False))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Any, int]:
        return self.dataset[key if self.with_step else key[:2]], key[1]


class KeyedCollate:
    """The task's collate function on the samples, and the batch's sample seeds beside it."""

    def __init__(self, collate_fn: Callable) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[tuple[Any, int]]) -> tuple[Any, list[int]]:
        return self.collate_fn([sample for sample, _ in items]), [seed for _, seed in items]


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups over trainable parameters only: no decay on norms and biases, backbone lr multiplier."""
    backbone_params = {id(p) for m in model.modules() if isinstance(m, BackboneAdapter) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (id(param) in backbone_params, param.ndim <= 1)
        groups.setdefault(key, []).append(param)
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return [{"params": params, "lr": cfg.lr * (cfg.backbone_lr_mult if in_backbone else 1.0),
             "weight_decay": 0.0 if no_decay else cfg.weight_decay}
            for (in_backbone, no_decay), params in sorted(groups.items())]


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable state atomically: a failed write (a full disk) keeps the last state file."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as err:  # torch's stream writer reports a failed write so
        raise TrainingError(f"writing {path} failed ({err}); the last state file was kept (free space and run "
                            "again: training resumes from it)") from err


class Optimisation:
    """AdamW, the learning-rate schedule and mixed precision of one run; :meth:`step` is one update.

    On CUDA with ``amp`` the forward runs under bf16 autocast where the GPU supports it (no loss
    scaling needed), else fp16 with PyTorch's GradScaler. The training loop and the benchmarks
    (``benchmarks/heads.py``) share this, so what is timed is what trains.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        # foreach: one call per step over all tensors (what CUDA does by default); on the CPU the
        # same arithmetic as the per-tensor loop, without its Python overhead per parameter
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.amp_dtype: torch.dtype | None = None
        if cfg.amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict], batch: Any,
             where: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward, backward, clip, update, schedule; returns the loss and its parts."""
        advice = "lower the learning rate or enable gradient clipping."
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            try:
                loss_dict = loss_fn(model, batch)
            except FloatingPointError as err:  # a library's own divergence check (Detectron2's RPN)
                raise TrainingError(f"non-finite values at {where}: {err}; {advice}") from err
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss {loss.item()} at {where} "
                                f"({ {k: float(v) for k, v in loss_dict.items()} }); {advice}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, loss_dict


def train(model: nn.Module, dataset: Dataset, collate_fn: Callable, loss_fn: Callable[[nn.Module, Any], dict],
          cfg: TrainConfig, run_dir: str | Path, *, seed: int, fingerprint: str,
          logger: MetricLogger | None = None, device: torch.device | None = None,
          on_state: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``run_dir/state.pt`` when it matches.

    ``fingerprint`` identifies the job (config + checkpoint); a state file written under another
    fingerprint is stale and ignored. Returns ``{"start", "step", "losses", "curve"}``: the step it
    started (resumed) from, the last step and its losses (none when it started at the last step), and
    every logged point (``step``, losses, ``lr``) since step 0, resumed runs included.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = distributed()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    opt = Optimisation(model, cfg, device)
    optimizer, scheduler, scaler = opt.optimizer, opt.scheduler, opt.scaler
    start = 0
    curve: list[dict[str, float]] = []
    state_path = run_dir / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            log.warning("%s was written for another configuration; starting from step 0", state_path)
        else:
            try:
                missing, unexpected = model.load_state_dict(state["model"], strict=False)
            except RuntimeError as err:  # tensors of another shape
                raise TrainingError(f"{state_path} does not match the model ({err}); delete it to start over.") from err
            expected_missing = set(model.state_dict()) - set(trainable_state_dict(model))
            if unexpected or set(missing) - expected_missing:
                raise TrainingError(f"{state_path} does not match the model (missing {sorted(missing)[:5]}, "
                                    f"unexpected {sorted(unexpected)[:5]}); delete it to start over.")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"])
            start = int(state["step"])
            curve = list(state.get("curve", []))
            log.info("resuming %s from step %d/%d", run_dir, start, cfg.steps)
    if start == 0:
        torch.manual_seed(seed)

    if cfg.batch_size % world:
        raise TrainingError(f"train.batch_size {cfg.batch_size} is the batch of a step over all {world} processes and "
                            f"does not divide between them: make it a multiple of {world}, or change the processes "
                            "(resources.nodes x resources.processes or resources.gpus)")
    sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, seed, start, cfg.steps, rank, world)
    loader = DataLoader(KeyedDataset(dataset), batch_sampler=sampler, collate_fn=KeyedCollate(collate_fn),
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed), worker_init_fn=ignore_stop_signals)
    forward_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Heads can leave parameters out of a step's graph (auxiliary outputs, empty ROI batches).
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                find_unused_parameters=True)

    def snapshot(step: int) -> dict[str, Any]:
        return {"step": step, "fingerprint": fingerprint, "model": trainable_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "config": asdict(cfg),
                "curve": curve}

    model.train()
    losses: dict[str, float] = {}
    step = start
    with (StopSignals() as stop,
          Progress(cfg.steps, f"train {run_dir}", unit="step", initial=start, enabled=rank == 0) as progress):
        for batch, sample_seeds in loader:
            batch = to_device(batch, device)
            with batch_seeds(sample_seeds):  # randomness inside the losses is drawn per sample
                loss, loss_dict = opt.step(forward_model, loss_fn, batch, where=f"step {step} in {run_dir}")
            step += 1
            losses = mean_over_ranks({"loss": loss.detach(), **{k: v.detach() for k, v in loss_dict.items()}}, world)
            progress.update(1, loss=losses["loss"])
            if step % cfg.log_every == 0 or step == cfg.steps:
                point = {**{f"train/{k}": v for k, v in losses.items()}, "train/lr": scheduler.get_last_lr()[0]}
                curve.append({"step": step, **point})
                if logger is not None and rank == 0:
                    logger.log_metrics(point, step)
            signum = stop.received()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or signum:
                if rank == 0:
                    state = snapshot(step)
                    save_state(state_path, state)
                    if on_state is not None:
                        on_state(state)
                barrier()  # nobody runs ahead of the state a resumed job would start from
            if signum and step < cfg.steps:
                raise Stopped(signum, f"{signal.Signals(signum).name} at step {step}/{cfg.steps}: the state is in "
                              f"{state_path}; run the job again to resume from it")
    return {"start": start, "step": step, "losses": losses, "curve": curve}
