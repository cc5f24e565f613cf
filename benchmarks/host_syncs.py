"""What one training step asks of the host: operators dispatched, and the points where it waits.

On a GPU, each operator the step dispatches is at least one kernel launch, and some make the host
wait until the device has caught up: reading a value back (``.item()``, ``int(t)``, ``if t.any()``,
all ``aten._local_scalar_dense``) or an output whose size depends on the data (``nonzero``,
``torch.where(cond)``, boolean-mask indexing, ``masked_select``, ``unique``, torchvision's
``nms``). Between two such waits the host cannot run ahead, so its launch work and the device's
compute add up instead of overlapping: the frozen Mask R-CNN step on the H100 (heads.py) spent
about 75 of its 107 ms in the heads, whose kernels are small.

These counts do not depend on the device (the same Python runs on both), so they are measured
here on the CPU, on the paper's model (Swin-B, the paper profile's heads and per-GPU batches) at
smaller inputs: what a step does is counted, not how long it takes. Operators are attributed to
the top-level part of the model whose forward was running (Mask R-CNN's ``transform``,
``backbone``, ``rpn``, ``roi_heads``; the whole of transformers' Mask2Former is ``model``), and to
``backward`` and ``optimizer`` after it. A wait is listed with the line that made it.

    python benchmarks/host_syncs.py --out benchmarks/results/host-syncs.json
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heads import SIZES, TASK_NAMES, _model_and_batch, environment, save_report, train_config  # noqa: E402

# The paper's model (Swin-B, the paper profile's heads and per-GPU batches) at inputs small enough
# for the CPU: what a step dispatches depends on the model and the batch, not on the image size.
# COCO stays large enough (512 px, about 7,000 RPN proposals an image) for torchvision's batched
# NMS to take the per-level path it takes at 1024 px on a GPU (over 5,000 boxes there, 1,000 on a CPU).
SIZES.setdefault("counts", {
    "backbone": "swin-b-in1k",
    "coco": {"batch": 2, "image": 512, "classes": 81},
    "ade20k": {"batch": 2, "image": 256, "classes": 150},
    "k400": {"batch": 8, "image": 64, "frames": 16, "classes": 400},
    "forward": [],
    "profile": "params/paper.yaml",
})

# Operators whose result the host must have before it goes on (their output's value or size).
WAITS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2",
         "unique_dim", "unique_consecutive", "nms", "repeat_interleave"}


def _op_name(func) -> str:
    return func._schema.name.split("::")[-1]


def _is_wait(func, args, kwargs) -> bool:
    import torch

    name = _op_name(func)
    if name == "repeat_interleave":  # repeats given as a tensor, without output_size, are read back
        overload = func._overloadname
        if overload == "self_int":
            return False
        position = 1 if overload == "Tensor" else 3
        given = kwargs.get("output_size", args[position] if len(args) > position else None)
        return given is None
    if name == "index":  # boolean-mask indexing is a nonzero first
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))
    return name in WAITS


def _to_host(args, kwargs) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the host as a string ("cpu"). A device object
    is left out: code that passes one (``grads[0].device``) follows the model onto a GPU."""
    targets = [kwargs.get("device")] + [a for a in args if isinstance(a, str)]
    return any(isinstance(t, str) and t.split(":")[0] == "cpu" for t in targets)


# Reads of tensors that stay on the host when the model is on a GPU: they cost no wait there.
# Patterns of the call sites (``_site``), each with the reason.
HOST_ONLY = {
    r"^torch/optim/": "AdamW keeps its step counts on the host unless fused or capturable",
    r"^torchvision/models/detection/transform\.py:\d+ \(torch_choice\)": "the random training size is drawn in a CPU tensor",
}


def _site() -> str:
    """The innermost caller outside torch (but for its optimizers and modules) and this file: ``path:line (function)``."""
    import traceback

    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if path == __file__ or ("/torch/" in path and "/torch/optim/" not in path and "/torch/nn/" not in path):
            continue
        short = path.split("site-packages/")[-1].split("/src/")[-1]
        return f"{short}:{frame.lineno} ({frame.name})"
    return "?"


def count_step(task: str, size: str, mode: str, steps: int = 2) -> dict:
    """Operators and host waits of one training step of ``task`` (the last of ``steps``), by part."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from frozenrep.training import Optimisation

    device = torch.device("cpu")
    model, loss_fn, batch, items = _model_and_batch(task, size, mode, device)
    model.train()
    opt = Optimisation(model, train_config(task, size, steps), device)
    for group in opt.optimizer.param_groups:  # AdamW's path on a GPU (on the CPU it loops over parameters)
        group["foreach"] = True
    part = ["other"]

    def enter(name):
        def hook(module, args):
            part.append(name)
        return hook

    def leave(module, args, output):
        part.pop()

    for name, child in model.named_children():
        child.register_forward_pre_hook(enter(name))
        child.register_forward_hook(leave)

    ops: Counter = Counter()
    waits: Counter = Counter()
    wait_ops: Counter = Counter()
    sites: Counter = Counter()
    host_only: Counter = Counter()

    def record(op: str) -> None:
        site = _site()
        if any(re.search(pattern, site) for pattern in HOST_ONLY):
            host_only[f"{site}: {op}"] += 1
            return
        waits[part[-1]] += 1
        wait_ops[f"{part[-1]}: {op}"] += 1
        sites[f"{site}: {op}"] += 1

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            where = part[-1]
            ops[where] += 1
            if _is_wait(func, args, kwargs or {}):
                record(_op_name(func))
            return func(*args, **(kwargs or {}))

    # the backward and the optimizer are told apart by wrapping what Optimisation calls
    real_backward, real_step = torch.Tensor.backward, opt.scaler.step

    def backward(self, *a, **k):
        part.append("backward")
        try:
            return real_backward(self, *a, **k)
        finally:
            part.pop()

    def optimizer_step(*a, **k):
        part.append("optimizer")
        try:
            return real_step(*a, **k)
        finally:
            part.pop()

    # Copies to the host do not dispatch on a CPU run (the tensor is already there), so the methods
    # that make them are counted where they are called: on a GPU each is a wait.
    def reading(method):
        real = getattr(torch.Tensor, method)

        def read(self, *a, **k):
            if method != "to" or _to_host(a, k):
                record(f"Tensor.{method}")
            return real(self, *a, **k)
        return real, read

    readers = {m: reading(m) for m in ("cpu", "tolist", "to")}  # not numpy(): on a GPU tensor it fails
    for i in range(steps):
        counting = i == steps - 1  # the first step builds optimizer state: count a later one
        if counting:
            torch.Tensor.backward, opt.scaler.step = backward, optimizer_step
            for m, (_, read) in readers.items():
                setattr(torch.Tensor, m, read)
            try:
                with Count():
                    opt.step(model, loss_fn, batch, where=f"host-sync count step {i}")
            finally:
                torch.Tensor.backward, opt.scaler.step = real_backward, real_step
                for m, (real, _) in readers.items():
                    setattr(torch.Tensor, m, real)
        else:
            opt.step(model, loss_fn, batch, where=f"host-sync count step {i}")
    return {"task": task, "size": size, "mode": mode, "batch": items, "operators": sum(ops.values()),
            "waits": sum(waits.values()), "operators_by_part": dict(ops.most_common()),
            "waits_by_part": dict(waits.most_common()), "waits_by_operator": dict(wait_ops.most_common()),
            "waits_by_site": dict(sites.most_common()), "host_only_reads": dict(host_only.most_common()),
            "host_only_reasons": HOST_ONLY}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=list(TASK_NAMES))
    parser.add_argument("--modes", nargs="+", choices=["frozen", "finetune"], default=["frozen", "finetune"])
    parser.add_argument("--sizes", nargs="+", choices=["default", "counts"], default=["counts"],
                        help="counts: the paper's model and per-GPU batches at small inputs (what is counted does "
                             "not depend on the input size); default: the embedded default's model and sizes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = {"environment": environment("cpu"), "settings": {k: str(v) for k, v in vars(args).items()},
              "steps": []}
    for size in args.sizes:
        for task in args.tasks:
            for mode in args.modes:
                r = count_step(task, size, mode)
                report["steps"].append(r)
                print(f"{size:8} {task:7} {mode:9} {r['operators']:6d} operators {r['waits']:4d} host waits  "
                      + ", ".join(f"{k} {v}" for k, v in r["waits_by_part"].items()), flush=True)
                save_report(args.out, report, quiet=True)
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
