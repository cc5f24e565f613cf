"""Run profiles: loading, the schema's defaults (the only defaults), the checks a JSON schema
cannot express, and the typed job spec that every head job (training, then evaluation) starts from.

The Snakefile validates the profile against params/schemas/config.schema.yaml (filling in its
defaults), then calls :func:`check_config`; both run before any job, and each error names the key
and what is allowed. The config dataclasses of the heads and the training loop have no defaults of
their own: :func:`config_from` fills them from the schema.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from frozenrep.checkpoints import CheckpointEntry
from frozenrep.io import fingerprint_of
from frozenrep.tasks import TASKS

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "params" / "schemas" / "config.schema.yaml"


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
    for table in ("table3", "table4"):
        for index, name in enumerate(config.get(table, {}).get("backbones", [])):
            known(f"{table}.backbones[{index}]", name)
    for task in config["tasks"]:
        dataset = task  # each task has its own dataset, of the same name
        if dataset not in config.get("datasets", {}):
            raise ConfigError(f"tasks lists {task!r}, but datasets.{dataset} is not set; add a datasets.{dataset} "
                              "section (source: generate, download or existing).")
        if task not in config:
            raise ConfigError(f"tasks lists {task!r}, but there is no {task} section with its head/train settings.")
        processes = job_world(config[task]["resources"])
        if config[task]["train"]["batch_size"] % processes:
            resources = config[task]["resources"]
            raise ConfigError(f"{task}.train.batch_size {config[task]['train']['batch_size']} is the batch of a step over "
                              f"all processes and does not divide between the job's {processes} "
                              f"({resources['nodes']} node(s) x {job_processes_per_node(resources)}): make it a "
                              f"multiple of {processes}, or change {task}.resources.")
        settings = config["datasets"][dataset]
        if settings["source"] == "existing" and not Path(settings["root"]).is_dir():
            raise ConfigError(f"datasets.{dataset}.root: {settings['root']} does not exist (source: existing); "
                              "point it at your copy, or use source: download.")
        if settings["source"] == "download":
            for key in TASKS[task].download_keys:
                if not settings.get("download", {}).get(key):
                    raise ConfigError(f"datasets.{dataset}.download.{key} is not set (source: download); "
                                      "see params/paper.yaml for the official sources.")


def job_processes_per_node(resources: Mapping[str, Any]) -> int:
    """Processes per node of a task's jobs: ``resources.processes``, else one per GPU (at least one)."""
    return resources.get("processes") or max(resources["gpus"], 1)


def job_world(resources: Mapping[str, Any]) -> int:
    """Processes of a task's head job over all its nodes."""
    return resources["nodes"] * job_processes_per_node(resources)


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


@functools.cache
def profile_schema(path: str | Path = SCHEMA_FILE) -> dict[str, Any]:
    """The profile schema (read once per process). The library reads the checkout's schema, so
    frozenrep is installed editable (``pip install -e .``, as ``make venv`` does)."""
    if not Path(path).is_file():
        raise ConfigError(f"the profile schema {path} does not exist: install frozenrep from its checkout with "
                          "`pip install -e .` (make venv), so that params/schemas/ is beside src/.")
    return yaml.safe_load(Path(path).read_text())


def schema_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of the keys of one section: ``coco.head``, ``k400.train``, ``$defs.train``."""
    schema = profile_schema()
    parts = section.split(".")
    node: Mapping[str, Any] = schema
    if parts[0] == "$defs":
        node, parts = schema["$defs"][parts[1]], parts[2:]
    for part in parts:
        node = node["properties"][part]
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return {key: value["default"] for key, value in node.get("properties", {}).items() if "default" in value}


def dataclass_from(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build a config dataclass, naming the params key at fault on an unknown or missing one."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    missing = sorted(known - set(values))
    if missing:
        raise KeyError(f"{where}: missing key(s) {missing}")
    converted = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                 for k, v in values.items()}
    return cls(**converted)


def config_from(cls: type, values: Mapping[str, Any], section: str, where: str | None = None) -> Any:
    """A config dataclass of schema section ``section`` from ``values`` over the section's defaults."""
    return dataclass_from(cls, {**schema_defaults(section), **values}, where or section)


@dataclass(frozen=True)
class JobSpec:
    """Everything a head job needs, built once from the validated profile.

    ``task_config`` is the profile's ``<task>`` section (defaults filled in, ``resources`` left
    out, a table-2 rung's head in place of the profile's); ``rung`` names that rung; ``table`` is
    the table whose MLflow parent run the job's run goes under.
    """

    study: str
    task: str
    backbone: str
    mode: str
    seed: int
    entry: CheckpointEntry
    task_config: dict[str, Any]
    device: str
    tracking: dict[str, Any]
    rung: str | None = None
    table: str = "table1"

    def to_json(self) -> str:
        """The spec as the rules pass it (``--spec``): sorted keys, so a change reruns exactly its jobs."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        values = json.loads(text)
        return cls(**{**values, "entry": CheckpointEntry.from_dict(values["entry"])})

    def fingerprint(self, checkpoint_sha256: str) -> str:
        """What identifies the job's results: everything but the tracking settings, and the checkpoint."""
        values = {k: v for k, v in asdict(self).items() if k != "tracking"}
        return fingerprint_of(values, checkpoint_sha256)

    def config(self, cls: type, key: str) -> Any:
        """One block of the task section as its config dataclass (``head``, ``train``)."""
        return config_from(cls, self.task_config[key], f"{self.task}.{key}")


def job_spec(config: Mapping[str, Any], registry: Mapping[str, CheckpointEntry], task: str, backbone: str, mode: str,
             seed: int | str, rung: str | None = None, table: str = "table1", **overrides: Any) -> JobSpec:
    """The job spec of (task, backbone, mode, seed) in the validated profile ``config``.

    ``rung`` names a table-2 head (``table2.rungs``) in place of the profile's; ``overrides`` replace
    other fields (tests: another study, device or tracking store).
    """
    task_config = json.loads(json.dumps({k: v for k, v in config[task].items() if k != "resources"}))
    finetune_steps = task_config.pop("finetune_steps", None)  # in the spec only as the steps it sets
    if mode == "finetune" and finetune_steps is not None:
        task_config["train"]["steps"] = finetune_steps
    if rung is not None:
        task_config["head"] = rung_head(config, task, rung)
    values = dict(study=config["study"], task=task, backbone=backbone, mode=mode, seed=int(seed),
                  entry=registry[backbone], task_config=task_config, device=config["device"],
                  tracking=dict(config["tracking"]), rung=rung, table=table)
    return JobSpec(**{**values, **overrides})


def load_profile(path: str | Path, schema: str | Path = SCHEMA_FILE) -> dict[str, Any]:
    """A profile as the Snakefile sees it: validated against the schema, with its defaults filled
    in (job specs, and so the heads' fingerprints, include them)."""
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    validate(config, str(schema), set_default=True)
    return config
