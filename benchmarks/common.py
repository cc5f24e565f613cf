"""What every benchmark script writes beside its figures: the environment, and the report itself."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def save_report(out: Path | None, report: dict, quiet: bool = False) -> None:
    """Write the report as JSON, atomically, when ``out`` is given (also part-way: a run cut short
    by a time limit keeps what it measured)."""
    if out:
        from frozenrep.io import write_text_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
        if not quiet:
            print(f"wrote {out}")


def environment(device_name: str) -> dict:
    import timm
    import torch
    import torchvision
    import transformers

    from frozenrep.runtime import pick_device

    device = pick_device(device_name)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
