"""frozenrep.locks: Snakemake's locks are stale only once no run of the directory is alive, and a job
waits for another process that holds its run directory."""

import signal
import subprocess
import sys

from frozenrep.locks import job_lock

START_RUN = """
import sys
from frozenrep.locks import release_stale_snakemake_locks
print([str(p) for p in release_stale_snakemake_locks(sys.argv[1])], flush=True)
if sys.argv[2:] == ["stay"]:
    sys.stdin.read()  # a run that stays alive until the test ends it
"""

TAKE_JOB = """
import sys
from frozenrep.locks import job_lock
from frozenrep.progress import setup_logging
setup_logging()
with job_lock(sys.argv[1], "training"):
    print("held", flush=True)
"""


def child(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_run(metadata):
    """What a new run of the directory removed (it then exits)."""
    return subprocess.run([sys.executable, "-c", START_RUN, str(metadata)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_locks_of_a_live_run_are_kept_and_those_of_a_killed_one_removed(tmp_path):
    metadata = tmp_path / ".snakemake"
    (metadata / "locks").mkdir(parents=True)
    locks = [metadata / "locks" / name for name in ("0.input.lock", "0.output.lock")]
    for lock in locks:
        lock.write_text("results/table1.csv\n")

    live = child(START_RUN, metadata, "stay")
    assert live.stdout.readline().strip() == str([str(p) for p in locks])  # no run was alive: stale
    for lock in locks:  # the live run's own locks (Snakemake writes them after parsing)
        lock.write_text("results/table1.csv\n")
    assert start_run(metadata) == "[]"  # another run starting now leaves them
    assert all(lock.exists() for lock in locks)

    live.send_signal(signal.SIGKILL)
    live.wait()
    assert start_run(metadata) == str([str(p) for p in locks])
    assert not any(lock.exists() for lock in locks)
    assert start_run(metadata) == "[]"  # nothing left to remove


def test_a_job_waits_for_the_process_that_holds_its_run_directory(tmp_path):
    run_dir = tmp_path / "runs" / "k400" / "seed0"
    with job_lock(run_dir, "training"):
        waiting = child(TAKE_JOB, run_dir)
        assert "another process is running this training" in waiting.stderr.readline()
        assert waiting.poll() is None  # it waits, and has not taken the directory
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and out == "held\n"
    with job_lock(run_dir, "training", hold=False):  # the other ranks of a torchrun job do not take it
        second = child(TAKE_JOB, run_dir)
        assert second.communicate(timeout=60)[0] == "held\n"
