"""Datasets: readers of the real on-disk formats (``data.<task>``), their download and layout checks.

The embedded default's generators live in :mod:`frozenrep.synthetic`; they write these formats.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from frozenrep.archives import extract
from frozenrep.download import fetch
from frozenrep.io import file_digest, write_json_atomic
from frozenrep.progress import log


class DatasetError(RuntimeError):
    """A dataset is missing, malformed or not what the config says; the message names the file."""


def download_and_extract(root: str | Path, files: list[dict[str, str]], downloads: str | Path,
                         verify_layout: Callable[[Path], Any], inner_dir: str | None = None,
                         **fetch_kwargs: Any) -> None:
    """Fetch archives (md5-checked, resumable), extract them safely, verify, and move into ``root``.

    Archives stay in ``downloads`` (a verified one is not fetched again); extraction goes to a
    temporary folder beside ``root`` that replaces it only once the layout checks pass.
    ``inner_dir`` names a single top-level folder of the archives to take as the root.
    """
    root, downloads = Path(root), Path(downloads)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for item in files:
        archive = downloads / Path(item["url"]).name
        if archive.exists() and item.get("md5") and file_digest(archive, "md5") == item["md5"]:
            log.info("%s already downloaded and verified", archive)
        else:
            fetch(item["url"], archive, md5=item.get("md5"), **fetch_kwargs)
        extract(archive, tmp)
    source = tmp / inner_dir if inner_dir and (tmp / inner_dir).is_dir() else tmp
    verify_layout(source)
    shutil.rmtree(root, ignore_errors=True)
    source.rename(root)
    shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(path: str | Path, dataset: str, summary: dict[str, Any], source: str) -> None:
    """The dataset rule's output: what was verified, with hashes of the annotation files (MLflow's data tag)."""
    write_json_atomic(path, {"dataset": dataset, "source": source, **summary})
