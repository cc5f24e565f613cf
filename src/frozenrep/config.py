"""Checks of a run profile that a JSON schema cannot express (names that must exist elsewhere).

The Snakefile validates the profile against params/schemas/config.schema.yaml first, then calls
:func:`check_config`; both run before any job, and each error names the key and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from frozenrep.checkpoints import CheckpointEntry

# task -> the dataset it is trained and evaluated on
DATASET_OF_TASK: dict[str, str] = {"coco": "coco", "ade20k": "ade20k", "k400": "k400"}
# what a `source: download` needs per dataset: archive files, or (Kinetics/CVDF) tar lists and csvs
DOWNLOAD_KEYS: dict[str, tuple[str, ...]] = {"coco": ("files",), "ade20k": ("files",), "k400": ("lists", "annotations")}


class ConfigError(ValueError):
    """A run profile names something that does not exist or cannot work."""


def check_config(config: Mapping[str, Any], registry: Mapping[str, CheckpointEntry]) -> None:
    """Raise ConfigError on the first problem found, naming the key and the allowed values."""
    for index, name in enumerate(config["backbones"]):
        if name not in registry:
            raise ConfigError(f"backbones[{index}]: unknown backbone {name!r}; the registry "
                              f"{config.get('registry', 'params/checkpoints.yaml')} has: {', '.join(sorted(registry))}")
    for task in config["tasks"]:
        dataset = DATASET_OF_TASK[task]
        if dataset not in config.get("datasets", {}):
            raise ConfigError(f"tasks lists {task!r}, but datasets.{dataset} is not set; add a datasets.{dataset} "
                              "section (source: generate, download or existing).")
        if task not in config:
            raise ConfigError(f"tasks lists {task!r}, but there is no {task} section with its head/train settings.")
        settings = config["datasets"][dataset]
        if settings["source"] == "existing" and not Path(settings["root"]).is_dir():
            raise ConfigError(f"datasets.{dataset}.root: {settings['root']} does not exist (source: existing); "
                              "point it at your copy, or use source: download.")
        if settings["source"] == "download":
            for key in DOWNLOAD_KEYS[dataset]:
                if not settings.get("download", {}).get(key):
                    raise ConfigError(f"datasets.{dataset}.download.{key} is not set (source: download); "
                                      "see params/paper.yaml for the official sources.")


def prefer_interpreter(executable: str) -> None:
    """Put ``executable``'s directory first on PATH, so that jobs' ``python`` is the same interpreter."""
    os.environ["PATH"] = os.pathsep.join([str(Path(executable).parent), os.environ.get("PATH", "")])


def job_spec(config: dict[str, Any], registry: dict[str, CheckpointEntry], task: str, backbone: str, mode: str,
             seed: int) -> dict[str, Any]:
    """Everything a training or evaluation job needs, from the profile (what the rules pass as --spec)."""
    return {"study": config["study"], "task": task, "backbone": backbone, "mode": mode, "seed": int(seed),
            "entry": registry[backbone].__dict__,
            "task_config": {k: v for k, v in config[task].items() if k != "resources"},
            "device": config["device"], "tracking": config["tracking"]}


def load_profile(path: str | Path, schema: str | Path = "params/schemas/config.schema.yaml") -> dict[str, Any]:
    """A profile as the Snakefile sees it: validated against the schema, with its defaults filled
    in (job specs, and so the heads' fingerprints, include them)."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    validate(config, str(schema), set_default=True)
    return config
