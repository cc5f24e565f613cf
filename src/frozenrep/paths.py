"""The output layout, written once: the rules' output patterns and the library's paths both come
from here.

A job is (task, backbone, mode, seed), or with a table-2 head rung (task, rung, backbone, mode,
seed); its files sit under the same relative path in each folder::

    runs/<job>/head.safetensors        the trained head (state.pt beside it: the resumable state)
    results/metrics/<job>.json         its evaluation
    results/curves/<job>.csv           its training curve (and results/plots/<job>.png)
    results/predictions/<job>/         validation samples drawn with the predictions
    logs/heads/<job>.log               the job's log (and logs/benchmark/heads/<job>.tsv)

and the tables are ``results/<table>.{csv,json,md,png}``.

where ``<job>`` is ``<task>/<backbone>/<mode>/seed<seed>``, or
``heads/<task>/<rung>/<backbone>/<mode>/seed<seed>`` for a rung.
"""

from __future__ import annotations

JOB = "{task}/{backbone}/{mode}/seed{seed}"
RUNG_JOB = "heads/{task}/{rung}/{backbone}/{mode}/seed{seed}"

HEAD = "runs/{job}/head.safetensors"
METRICS = "results/metrics/{job}.json"
CURVE = "results/curves/{job}.csv"
PLOT = "results/plots/{job}.png"
PREDICTIONS = "results/predictions/{job}"
LOG = "logs/heads/{job}.log"  # training, then evaluation
BENCHMARK = "logs/benchmark/heads/{job}.tsv"

MANIFEST = "data/{dataset}.manifest.json"
TABLE = "results/{table}.{ext}"  # ext: csv, json (DVC metrics), md, png


def pattern(template: str, rung: bool = False) -> str:
    """A Snakemake output pattern: ``template`` with the job's wildcards (a rung's, with ``rung``)."""
    return template.replace("{job}", RUNG_JOB if rung else JOB)


def job_path(template: str, task: str, backbone: str, mode: str, seed: int | str, rung: str | None = None) -> str:
    """One job's file (``rung``: a table-2 rung's job)."""
    return pattern(template, rung is not None).format(task=task, backbone=backbone, mode=mode, seed=seed, rung=rung)


def head_path(task: str, backbone: str, mode: str, seed: int | str) -> str:
    return job_path(HEAD, task, backbone, mode, seed)


def table_path(table: str, ext: str = "csv") -> str:
    """One of a table's files: ``results/table1.csv``, ``results/table2.png``, ..."""
    return TABLE.format(table=table, ext=ext)


def manifest_path(dataset: str) -> str:
    """The dataset rule's output: what was verified (every job of the dataset's task depends on it)."""
    return MANIFEST.format(dataset=dataset)
