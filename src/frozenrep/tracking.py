"""MLflow tracking: one experiment per study, a parent run per table, one child run per job.

The default store is a local sqlite file (``tracking.uri`` in params); ``MLFLOW_TRACKING_URI``
overrides it (a tracking server: ``http://...``). Each table of a study has one parent run, named
after the table and tagged ``role=table``; every pretraining job and head job (training, then
evaluation) that feeds the table is its child (``mlflow.parentRunId``), and the table's cells are logged on it.
Child run names follow ``{task}-{backbone}-{mode}-s{seed}``; every child carries the same tags
(task, backbone, pretraining, mode, seed, head settings, git commit, checkpoint and data hashes),
so the UI's compare view lines up. The tables never read MLflow: it is for looking, not a cache.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from frozenrep.progress import log

DEFAULT_URI = "sqlite:///mlruns.db"


def resolve_uri(configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the configured URI; relative sqlite paths made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def git_commit() -> str:
    """The current commit (with ``-dirty`` when the work tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (which decides where artifacts go) rather than a local store."""
    return uri.split("://", 1)[0] in ("http", "https", "databricks")


def ensure_experiment(uri: str, name: str, artifact_root: str | Path = "mlartifacts") -> str:
    """Create the study's experiment if needed; return its id.

    With a local store its artifacts go under ``artifact_root``; a tracking server keeps its own
    artifact root (a path on this machine would be wrong for everybody else reading the server).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if is_server(uri):
        location = None
    else:
        location = Path(artifact_root).resolve().as_uri() if "://" not in str(artifact_root) else str(artifact_root)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it between our look-up and create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def run_name(task: str, backbone: str, mode: str, seed: int, rung: str | None = None) -> str:
    """``coco-tiny-swin-none-frozen-s0``; a table-2 rung's head goes after the task: ``coco[heavy]-...``."""
    return f"{task}{f'[{rung}]' if rung else ''}-{backbone}-{mode}-s{seed}"


def parent_run(uri: str, experiment: str, table: str) -> str:
    """The id of ``table``'s parent run in the study's experiment, created (RUNNING) on first use.

    Should two processes create it at once, both settle on the earliest and the other is deleted.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(uri, experiment)
    query = f"tags.role = 'table' and tags.table = '{table}'"

    def existing() -> list[Any]:
        runs = client.search_runs([experiment_id], query, max_results=50)
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    runs = existing()
    if runs:
        return runs[0].info.run_id
    mine = client.create_run(experiment_id, run_name=table,
                             tags={"role": "table", "table": table, "study": experiment,
                                   "git_commit": git_commit()}).info.run_id
    first = existing()[0].info.run_id
    if first != mine:
        client.delete_run(mine)
    return first


class RunLogger:
    """Logs into one MLflow run through the client API (no global state).

    Tracking never stops a job: when the store fails (a tracking server gone away, after MLflow's
    own retries, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), the failure is logged once and the run's
    later calls do nothing; the job's files are written as usual. ``failed`` says why.
    """

    def __init__(self, client: Any, run_id: str | None, uri: str = "") -> None:
        self.client, self.run_id, self.uri = client, run_id, uri
        self.failed: str | None = None if run_id is not None else "no run could be opened"

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:  # the store's errors are many (MlflowException, requests', sqlite's)
            self.failed = f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("MLflow tracking at %s failed (%s); the job goes on untracked, its files are written "
                        "as usual", self.uri, self.failed)
            return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if items:
            self._call("logging metrics", "log_batch", self.run_id, metrics=items)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        run = self._call("reading the run", "get_run", self.run_id)
        if run is None:
            return
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in run.data.params]
        for start in range(0, len(items), 100):
            self._call("logging params", "log_batch", self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self._call("setting tags", "set_tag", self.run_id, key, str(value))

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._call(f"logging {artifact_file}", "log_dict", self.run_id, data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"logging {Path(path).name}", "log_artifact", self.run_id, str(path), artifact_path)

    def terminate(self, status: str) -> None:
        self._call("closing the run", "set_terminated", self.run_id, status=status)


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested config → ``{"a.b.c": value}`` for MLflow params."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


@contextlib.contextmanager
def tracked_run(uri: str, experiment: str, name: str, tags: dict[str, Any], params: dict[str, Any] | None = None,
                resume_run_id: str | None = None, parent: str | None = "table1") -> Iterator[RunLogger]:
    """Open (or reopen) a run, a child of table ``parent``'s run; mark it FINISHED on success,
    FAILED with the error on an exception. A store that cannot be reached gives a logger that
    tracks nothing (:class:`RunLogger`), never an error."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = None
    try:
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent_run(uri, experiment, parent)}
        if resume_run_id:
            try:
                client.get_run(resume_run_id)
                run_id = resume_run_id
                client.update_run(run_id, status="RUNNING")
            except MlflowException:
                log.warning("MLflow run %s is not in %s; starting a new run", resume_run_id, uri)
        if run_id is None:
            experiment_id = ensure_experiment(uri, experiment)
            run_id = client.create_run(experiment_id, run_name=name,
                                       tags={k: str(v) for k, v in tags.items()}).info.run_id
    except Exception as err:  # the store is unreachable: the job goes on untracked
        log.warning("MLflow tracking at %s failed (opening the run: %s: %s); the job goes on untracked, its "
                    "files are written as usual", uri, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        run_id = None
    logger = RunLogger(client, run_id, uri)
    logger.set_tags(tags)
    if params:
        logger.log_params(params)
    try:
        yield logger
    except BaseException as err:
        logger.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        logger.terminate("FAILED" if isinstance(err, Exception) else "KILLED")
        raise
    logger.terminate("FINISHED")


def log_table(uri: str, experiment: str, table_name: str, cells: dict[str, float], files: list[Path]) -> str | None:
    """Log a finished table on its parent run: every cell as a metric, the table files as artifacts.

    The parent is marked FINISHED; its id is returned (None when the store cannot be reached: the
    table's files are written already, and tracking never undoes them).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run_id = parent_run(uri, experiment, table_name)
    except Exception as err:
        log.warning("MLflow tracking at %s failed (opening the %s run: %s: %s); the table is not logged",
                    uri, table_name, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None
    logger = RunLogger(client, run_id, uri)
    logger.set_tags({"git_commit": git_commit()})
    logger.log_metrics(cells)
    for path in files:
        logger.log_artifact(path, "table")
    logger.terminate("FINISHED")
    return run_id if logger.failed is None else None
