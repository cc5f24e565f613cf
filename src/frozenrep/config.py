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


def check_config(config: Mapping[str, Any], registry: Mapping[str, CheckpointEntry],
                 schema: Mapping[str, Any] | None = None) -> None:
    """Raise ConfigError on the first problem found, naming the key and the allowed values.

    With ``schema`` (the profile schema) every table-2 rung's head is also validated as a head.
    """
    def known(key: str, name: str) -> None:
        if name not in registry:
            raise ConfigError(f"{key}: unknown backbone {name!r}; the registry "
                              f"{config.get('registry', 'params/checkpoints.yaml')} has: {', '.join(sorted(registry))}")

    for index, name in enumerate(config["backbones"]):
        known(f"backbones[{index}]", name)
    if "table2" in config:
        known("table2.backbone", config["table2"]["backbone"])
        for task, rungs in config["table2"]["rungs"].items():
            if task not in config["tasks"]:
                raise ConfigError(f"table2.rungs.{task}: {task!r} is not in tasks ({', '.join(config['tasks'])}); "
                                  "add it there or remove its rungs.")
            names = [rung["name"] for rung in rungs]
            if len(set(names)) < len(names):
                raise ConfigError(f"table2.rungs.{task}: rung names must differ, got {names}")
            for rung in rungs:
                where = f"table2.rungs.{task}[{rung['name']}].head"
                unknown = sorted(set(rung["head"]) - set(config[task]["head"]))
                if unknown:
                    raise ConfigError(f"{where}: unknown key(s) {unknown}; {task}.head has: "
                                      f"{', '.join(sorted(config[task]['head']))}")
                if schema is not None:
                    _validate(rung_head(config, task, rung["name"]), schema["properties"][task]["properties"]["head"],
                              where)
    for index, name in enumerate(config.get("table3", {}).get("backbones", [])):
        known(f"table3.backbones[{index}]", name)
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


def _validate(value: Any, schema: Mapping[str, Any], where: str) -> None:
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        path = ".".join(str(p) for p in err.absolute_path)
        raise ConfigError(f"{where}{'.' + path if path else ''}: {err.message}") from None


def rung_head(config: Mapping[str, Any], task: str, rung: str) -> dict[str, Any]:
    """The head of table-2 rung ``rung`` of ``task``: the profile's head with the rung's keys replaced."""
    for entry in config["table2"]["rungs"][task]:
        if entry["name"] == rung:
            return {**config[task]["head"], **entry["head"]}
    names = [entry["name"] for entry in config["table2"]["rungs"][task]]
    raise ConfigError(f"table2.rungs.{task} has no rung {rung!r}; it has: {', '.join(names)}")


def is_profile_head(config: Mapping[str, Any], task: str, rung: str) -> bool:
    """Whether a rung's head is the profile's own, so table 1's jobs are that rung's jobs."""
    return rung_head(config, task, rung) == config[task]["head"]


def prefer_interpreter(executable: str) -> None:
    """Put ``executable``'s directory first on PATH, so that jobs' ``python`` is the same interpreter."""
    os.environ["PATH"] = os.pathsep.join([str(Path(executable).parent), os.environ.get("PATH", "")])


def job_spec(config: dict[str, Any], registry: dict[str, CheckpointEntry], task: str, backbone: str, mode: str,
             seed: int, rung: str | None = None, table: str = "table1") -> dict[str, Any]:
    """Everything a training or evaluation job needs, from the profile (what the rules pass as --spec).

    ``rung`` names a table-2 head (``table2.rungs``) in place of the profile's; ``table`` is the
    table whose MLflow parent run the job's run goes under. Table 1's jobs carry neither key.
    """
    task_config = {k: v for k, v in config[task].items() if k != "resources"}
    spec = {"study": config["study"], "task": task, "backbone": backbone, "mode": mode, "seed": int(seed),
            "entry": registry[backbone].__dict__, "task_config": task_config,
            "device": config["device"], "tracking": config["tracking"]}
    if rung is not None:
        task_config["head"] = rung_head(config, task, rung)
        spec["rung"] = rung
    if table != "table1":
        spec["table"] = table
    return spec


def load_profile(path: str | Path, schema: str | Path = "params/schemas/config.schema.yaml") -> dict[str, Any]:
    """A profile as the Snakefile sees it: validated against the schema, with its defaults filled
    in (job specs, and so the heads' fingerprints, include them)."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    validate(config, str(schema), set_default=True)
    return config
