"""Where a job runs: device choice, thread budget, the torchrun process group (set-up, shutdown,
and the collectives the training loop and the evaluations use), and the stop signals a scheduler
sends. Without a process group every collective is the identity, so the same code runs in a plain
process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

log = logging.getLogger("frozenrep")  # frozenrep.progress sets it up; this module imports none of frozenrep


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when visible, else the CPU; ``cuda`` without a visible GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but no CUDA device is visible; set device: auto or cpu.")
    return torch.device(name)


def set_up_cpu(threads: int | None) -> None:
    """A job process's CPU arithmetic, set before its first operation: the job's thread budget
    (Snakemake's ``threads``) for intra-op parallelism, and denormal floats flushed to zero.

    Denormals are what small weights and activations decay to (randomly initialised and frozen
    backbones, mask heads early in training); on x86 every operation on one takes a slow microcode
    path, and a step pays up to half its time for values that round to zero anyway. Flushing is
    per thread: set here first, the intra-op threads created later inherit it."""
    torch.set_flush_denormal(True)  # False (and a no-op) where the CPU has no such mode
    if threads:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def start_distributed(name: str = "auto") -> tuple[torch.device, int]:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group, NCCL on GPUs and gloo on the CPU;
    return this rank's device and its rank (``(device, 0)`` in a plain process)."""
    import torch.distributed as dist

    device = pick_device(name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s (local rank %s, %s)", dist.get_rank(), dist.get_world_size(), socket.gethostname(),
             os.environ.get("LOCAL_RANK", "0"), device)
    return device, dist.get_rank()


def stop_distributed() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# SIGTERM: preemption, scancel, Snakemake or torchrun stopping the job; SIGUSR1: what SLURM sends
# ahead of the time limit when asked to (sbatch --signal=USR1@<seconds>)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(BaseException):
    """A stop signal came and the job saved what it needs to resume (like ``KeyboardInterrupt``, not
    an error: MLflow marks the run KILLED). :func:`job_process` then ends the process by that signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While the block runs, a stop signal (:data:`STOP_SIGNALS`) is noted instead of ending the
    process; :meth:`received` says, at a point of the loop's choosing, whether any rank got one.
    Outside the main thread (where Python delivers signals) nothing is installed."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.signum and not isinstance(exc[1], Stopped):  # noted, but the block ended first
            signal.raise_signal(self.signum)

    def _note(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum

    def received(self) -> int:
        """The signal this rank or any other got (0: none); every rank gets the same answer, so
        they all stop after the same step."""
        _, world = distributed()
        if world == 1:
            return self.signum
        import torch.distributed as dist

        flag = torch.tensor([self.signum], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's start: stop signals are the training process's to handle (a scheduler
    signals every process of the job); the loader ends its workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextmanager
def job_process(threads: int | None) -> Iterator[None]:
    """A head job's process: its thread budget, the process group left on exit,
    and after a :class:`Stopped` (its state saved), the end of the process by the signal that
    stopped it, as the sender expects."""
    set_up_cpu(threads)
    try:
        yield
    except Stopped as stop:
        stop_distributed()
        log.warning("%s", stop)
        signal.signal(stop.signum, signal.SIG_DFL)
        signal.raise_signal(stop.signum)
        raise
    finally:
        stop_distributed()


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` of the process group torchrun set up, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if distributed()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def shard(count: int) -> list[int]:
    """The sample indices this rank evaluates: every ``world``-th, starting at its rank."""
    rank, world = distributed()
    return list(range(rank, count, world))


def gather(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    _, world = distributed()
    if world == 1:
        return list(items)
    import torch.distributed as dist

    pooled: list[list[Any] | None] = [None] * world
    dist.all_gather_object(pooled, list(items))
    return [item for part in pooled for item in part]


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks (integer tensors stay exact)."""
    _, world = distributed()
    if world == 1:
        return tensor
    import torch.distributed as dist

    # NCCL reduces device tensors only; gloo takes host tensors
    total = tensor.to("cuda", copy=True) if dist.get_backend() == "nccl" else tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def global_normaliser_scale(local: torch.Tensor) -> torch.Tensor:
    """Factors that turn losses averaged over this rank's normalisers ``local`` (counts or weight
    sums, one per loss term) into losses averaged over all ranks' normalisers, once DDP has averaged
    the gradients: ``local * world / sum over ranks``. Ones in a single process, or where every
    rank's normaliser is zero."""
    _, world = distributed()
    if world == 1:
        return torch.ones_like(local)
    import torch.distributed as dist

    total = local.clone()
    dist.all_reduce(total)
    return torch.where(total > 0, local * world / total.clamp(min=1e-12), torch.ones_like(local))


def mean_over_ranks(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The step's losses averaged over the ranks (the global batch's loss); plain floats.

    Read back in one copy: on a GPU each read of a value makes the host wait for the device.
    """
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(stacked)
        return {k: v / world for k, v in zip(values, stacked.tolist())}
    return dict(zip(values, stacked.tolist()))
