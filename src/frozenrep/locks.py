"""Locks that die with their process: stale Snakemake locks after a killed run, and one job per run
directory.

Snakemake marks a working directory as in use with files under ``.snakemake/locks``; a Snakemake
killed with SIGKILL (the OOM killer, ``kill -9``) never removes them, and the next run stops with
"Directory cannot be locked". Every main Snakemake process of this workflow also holds a shared
``flock`` on ``.snakemake/frozenrep.running``, which the kernel drops when the process ends however
it ends. A new run that can take that lock exclusively knows no other run is alive, so the lock
files it finds are stale: it removes them, says so, and goes on.

A killed Snakemake's jobs keep running. :func:`job_lock` makes a rerun's job wait for the orphan of
the same run directory to end instead of training the same head beside it; the rerun then resumes
from the orphan's state file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO, Iterator

from frozenrep.progress import log

_held: list[IO[bytes]] = []  # the open lock files of this process; closed (released) when it exits


def release_stale_snakemake_locks(metadata: str | os.PathLike[str] = ".snakemake") -> list[Path]:
    """Mark this process as a live Snakemake run of ``metadata``'s working directory; if no other
    run is alive, remove the lock files of runs that died without removing them. Returns the
    removed files (empty when there were none or another run is alive)."""
    metadata = Path(metadata)
    metadata.mkdir(parents=True, exist_ok=True)
    running = open(metadata / "frozenrep.running", "ab")  # noqa: SIM115 - held open until the process exits
    _held.append(running)
    removed: list[Path] = []
    try:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another run is alive: its locks are its own
    else:
        for lock in sorted((metadata / "locks").glob("*.lock")):
            lock.unlink(missing_ok=True)
            removed.append(lock)
    fcntl.flock(running, fcntl.LOCK_SH)  # from now on others see this run as alive
    return removed


@contextlib.contextmanager
def job_lock(directory: str | os.PathLike[str], what: str = "job", hold: bool = True) -> Iterator[None]:
    """Hold ``directory`` (created if missing) for this job while the block runs; if another
    process holds it (the orphaned job of a killed Snakemake run), log that and wait for it.
    ``hold=False`` (the other ranks of a torchrun job: rank 0 holds it for all) does nothing."""
    if not hold:
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process is running this %s (one a killed run left behind?); "
                        "waiting for it to end", directory, what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
