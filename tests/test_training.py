"""The training loop: exact resume after a kill, stale state, schedules."""

import math

import pytest
import torch

from frozenrep.backbones import trainable_state_dict
from frozenrep.config import config_from
from frozenrep.data.coco import CocoDetection, collate
from frozenrep.heads.coco import detection_loss
from frozenrep.training import ResumableBatchSampler, TrainConfig, TrainingError, lr_factor, train

CFG = dict(steps=6, batch_size=2, lr=5e-3, warmup_steps=2, checkpoint_every=2, grad_clip=5.0)


class Killed(Exception):
    pass


def run(tiny_detector, tiny_coco, run_dir, kill_at=None, fingerprint="f", engine="torchvision"):
    model = tiny_detector("frozen", engine=engine)
    dataset = CocoDetection(tiny_coco, "train", train=True)

    def on_state(state):
        if kill_at is not None and state["step"] == kill_at:
            raise Killed

    train(model, dataset, collate, detection_loss, config_from(TrainConfig, dict(**CFG), "$defs.train"), run_dir, seed=3,
          fingerprint=fingerprint, on_state=on_state)
    return trainable_state_dict(model)


@pytest.mark.parametrize("engine", ["torchvision", "detectron2"])
def test_resume_after_kill_matches_uninterrupted_run(tiny_detector, tiny_coco, tmp_path, engine):
    reference = run(tiny_detector, tiny_coco, tmp_path / "a", engine=engine)
    with pytest.raises(Killed):
        run(tiny_detector, tiny_coco, tmp_path / "b", kill_at=4, engine=engine)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 4
    resumed = run(tiny_detector, tiny_coco, tmp_path / "b", engine=engine)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_state_of_another_configuration_is_ignored(tiny_detector, tiny_coco, tmp_path, caplog):
    with pytest.raises(Killed):
        run(tiny_detector, tiny_coco, tmp_path / "r", kill_at=2, fingerprint="old")
    fresh = run(tiny_detector, tiny_coco, tmp_path / "fresh", fingerprint="new")
    restarted = run(tiny_detector, tiny_coco, tmp_path / "r", fingerprint="new")
    assert "written for another configuration" in caplog.text
    assert all(torch.equal(fresh[k], restarted[k]) for k in fresh)


def test_batch_order_depends_only_on_seed_and_step():
    full = list(ResumableBatchSampler(10, 3, seed=1, start=0, steps=8))
    tail = list(ResumableBatchSampler(10, 3, seed=1, start=5, steps=8))
    assert full[5:] == tail
    epoch0 = [i for batch in full[:3] for i, _, _ in batch]
    assert len(set(epoch0)) == 9  # no repeats within an epoch
    assert [{step for _, _, step in batch} for batch in full] == [{k} for k in range(8)]  # each key names its step
    assert full != list(ResumableBatchSampler(10, 3, seed=2, start=0, steps=8))


def test_lr_schedules():
    cfg = config_from(TrainConfig, dict(steps=100, batch_size=1, lr=1.0, warmup_steps=10), "$defs.train")
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(100, cfg) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(55, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    step = config_from(TrainConfig, dict(steps=100, batch_size=1, lr=1.0, schedule="step", step_milestones=(0.5, 0.9)), "$defs.train")
    assert [lr_factor(s, step) for s in (0, 49, 50, 89, 90)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_nothing_to_train_is_an_error(tiny_coco, tmp_path):
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        train(model, CocoDetection(tiny_coco, "train"), collate, detection_loss,
              config_from(TrainConfig, dict(steps=1, batch_size=1, lr=1.0), "$defs.train"), tmp_path, seed=0, fingerprint="x")


def test_seeded_rng_draws_from_the_seed_and_restores_the_global_generator():
    from frozenrep.randomness import sample_rng, seeded_rng

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded_rng(7):
        inside = torch.rand(4)
    assert torch.equal(inside, torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.rand(3), expected_next)  # the run's own stream goes on as if nothing happened
    with sample_rng(5, 2, torch.device("cpu")):
        a = torch.rand(2)
    with sample_rng(5, 2, torch.device("cpu")):
        b = torch.rand(2)
    with sample_rng(5, 3, torch.device("cpu")):
        c = torch.rand(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_step_losses_are_read_back_in_one_copy(monkeypatch):
    """The training loop reads a step's losses for its progress bar: one copy for all of them (on
    a GPU each read is a host-device wait), the same floats as reading each."""
    from conftest import DispatchedOps

    from frozenrep.training import mean_over_ranks

    values = {"loss": torch.tensor(1.2345678), "loss_mask": torch.tensor(0.25, dtype=torch.bfloat16),
              "loss_box": torch.tensor(3.0e-7, dtype=torch.float64)}
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or tolist(self))
    with DispatchedOps() as ops:
        losses = mean_over_ranks(values, world=1)
    assert "aten::_local_scalar_dense" not in ops.names and reads == [(3,)]
    assert losses == {k: float(v.float()) for k, v in values.items()}
    assert all(type(v) is float for v in losses.values())


def test_a_job_process_flushes_denormals_on_each_of_its_threads():
    """Denormal floats (what small frozen weights and activations decay to) cost each CPU operation
    a slow path: a job's process flushes them to zero, on the intra-op threads it starts as well."""
    import subprocess
    import sys

    probe = ("import torch\n"
             "from frozenrep.runtime import job_process\n"
             "with job_process(2):\n"
             "    x = torch.full((1 << 22,), 1e-39) * 1.0\n"  # long enough to be split over both threads
             "    print(torch.get_num_threads(), int((x != 0).sum()), float(torch.full((1,), 1e-30)[0] * 1e-9))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "0", "0.0"]
