"""Warm job processes (frozenrep.warm): a script forked from the server runs as `python SCRIPT`
runs it (arguments, directory, environment, streams, exit status, signals), a job forked warm
trains and evaluates what a cold one does, and without a server the client runs the script itself."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import workspace

PYTHON = sys.executable
SCRIPT = textwrap.dedent("""\
    import atexit, os, signal, sys, time
    atexit.register(lambda: print("atexit", file=sys.stderr))
    print("argv", sys.argv, "cwd", os.getcwd(), "X", os.environ.get("X"), "path0", sys.path[0], "umask", oct(os.umask(0)))
    print("stdin", sys.stdin.read().strip())
    print("pid", os.getpid(), file=sys.stderr, flush=True)
    mode = sys.argv[1]
    if mode == "exit3":
        sys.exit(3)
    if mode == "message":
        sys.exit("a message")
    if mode == "raise":
        raise ValueError("boom")
    if mode in ("wait", "wait-handled"):
        if mode == "wait-handled":
            signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(7)))
        open(sys.argv[2], "w").write(str(os.getpid()))
        time.sleep(120)
""")


def wait_for(condition, what: str, timeout: float = 60):
    return workspace.wait_for(condition, what, timeout, interval=0.05)


def alive(pid: int) -> bool:
    """Running (an ended process its parent has not reaped yet is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_server(path: Path, *tasks: str, env: dict | None = None) -> subprocess.Popen:
    """A warm server preloading ``tasks``' modules (none: only the base ones); returns once it serves."""
    log = open(path.with_suffix(".log"), "w")
    server = subprocess.Popen([PYTHON, "-m", "frozenrep.warm", "--serve", str(path), "--tasks", *tasks],
                              stdout=log, stderr=log, env=env, start_new_session=True)
    wait_for(lambda: path.exists() or server.poll() is not None, "the server's socket", 300)
    assert server.poll() is None, path.with_suffix(".log").read_text()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warm")
    process = start_server(folder / "socket")
    yield folder / "socket"
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    return path


def client(script: Path, *args: str, socket: Path | None, extra_env: dict | None = None) -> subprocess.Popen:
    """`python -m frozenrep.warm SCRIPT ARGS` with FROZENREP_WARM naming ``socket`` (None: unset)."""
    env = {**os.environ, "X": "from the client", **(extra_env or {})}
    env.pop("FROZENREP_WARM", None)
    if socket is not None:
        env["FROZENREP_WARM"] = str(socket)
    return subprocess.Popen([PYTHON, "-m", "frozenrep.warm", str(script), *args], cwd=script.parent, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_pid(stderr: str) -> int:
    return int(stderr.split("pid ")[1].split()[0])


@pytest.mark.parametrize("mode", ["ok", "exit3", "message", "raise"])
def test_a_script_forked_warm_runs_as_python_runs_it(server, script, mode):
    """The same output, error output and exit status as `python SCRIPT` with the client's arguments,
    directory, environment, standard input and umask; the exit functions run."""
    runs = {}
    for name, socket in (("warm", server), ("cold", None)):
        process = client(script, mode, socket=socket)
        out, err = process.communicate("from stdin", timeout=120)
        runs[name] = (out, err.replace(f"pid {job_pid(err)}", "pid N"), process.returncode, job_pid(err) != process.pid)
    assert runs["warm"][:3] == runs["cold"][:3], runs
    assert runs["warm"][3] and not runs["cold"][3]  # forked by the server, and the client's own process
    out, err, code, _ = runs["warm"]
    assert f"argv ['{script}', '{mode}'] cwd {script.parent} X from the client path0 {script.parent}" in out
    assert "stdin from stdin" in out and err.endswith("atexit\n")
    assert code == {"ok": 0, "exit3": 3, "message": 1, "raise": 1}[mode]
    if mode == "raise":
        assert err.startswith("pid N\nTraceback (most recent call last):\n  File \"" + str(script))  # the script's frames only


def test_the_client_relays_a_stop_signal_and_ends_as_its_job_ended(server, script, tmp_path):
    """SIGTERM to the client reaches the job: a job that handles it exits with its own status; a job
    that does not dies by it, and so does the client (what Snakemake and SLURM see)."""
    for mode, expected in (("wait-handled", 7), ("wait", -signal.SIGTERM)):
        pidfile = tmp_path / f"{mode}.pid"
        process = client(script, mode, str(pidfile), socket=server)
        process.stdin.close()
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the job"))
        assert pid != process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == expected, process.stderr.read()
        wait_for(lambda: not alive(pid), "the job to end")
        if mode == "wait-handled":
            assert "got SIGTERM" in process.stdout.read()


def test_a_client_killed_outright_takes_its_job_with_it(server, script, tmp_path):
    pidfile = tmp_path / "job.pid"
    process = client(script, "wait", str(pidfile), socket=server)
    process.stdin.close()
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the job"))
    process.kill()
    process.wait(timeout=60)
    wait_for(lambda: not alive(pid), "the job to be killed with its client", 10)


def test_without_a_server_the_client_runs_the_script_itself(server, script, tmp_path):
    """No FROZENREP_WARM, a socket that is gone, and a server whose interpreter settings differ from
    the job's (PYTHONHASHSEED here): the script runs in the client's own process, as python would."""
    cases = {"unset": (None, {}), "gone": (tmp_path / "no-such-socket", {}),
             "refused": (server, {"PYTHONHASHSEED": "123"})}
    for name, (socket, extra) in cases.items():
        process = client(script, "exit3", socket=socket, extra_env=extra)
        out, err = process.communicate("", timeout=120)
        assert process.returncode == 3 and job_pid(err) == process.pid, (name, err)


def test_the_server_stops_taking_jobs_when_its_run_dies_and_ends_after_its_last_job(script, tmp_path):
    """The Snakemake that started the server is SIGKILLed: the server removes its socket (new jobs run
    cold) and the socket's private folder, and ends once the job it forked has ended."""
    socket = tmp_path / "run" / "socket"
    socket.parent.mkdir()
    starter = subprocess.Popen([PYTHON, "-c", textwrap.dedent(f"""\
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-m", "frozenrep.warm", "--serve", {str(socket)!r}],
                         stderr=open({str(tmp_path / 'server.log')!r}, "w"), start_new_session=True)
        time.sleep(600)
    """)])
    wait_for(socket.exists, "the server's socket", 300)
    pidfile = tmp_path / "job.pid"
    job = client(script, "wait", str(pidfile), socket=socket)
    job.stdin.close()
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the job"))
    server_pid = int(subprocess.run(["pgrep", "-f", f"frozenrep.warm --serve {socket}"], capture_output=True,
                                    text=True).stdout.split()[0])
    starter.kill()
    starter.wait()
    wait_for(lambda: not socket.parent.exists(), "the server to stop taking jobs and remove its folder", 10)
    assert alive(server_pid) and alive(pid)  # its job runs on, and the server waits for it
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == -signal.SIGTERM
    wait_for(lambda: not alive(server_pid), "the server to end", 10)


@pytest.mark.slow
def test_a_head_job_forked_warm_trains_and_evaluates_what_a_cold_one_does(job_root, tmp_path):
    """A K400 head job (train, then evaluate) from a server that preloaded K400's modules: the same
    head weights, curve and metrics as the job run as a process of its own."""
    import torch
    from safetensors.torch import load_file
    from workspace import REPO, job_spec, metrics_of

    root, entry = job_root
    spec = job_spec(root, entry, "k400", "warm", steps=6, checkpoint_every=3, log_every=1)
    socket = tmp_path / "socket"
    process = start_server(socket, "k400")
    try:
        heads = {}
        for name, warm in (("warm", str(socket)), ("cold", None)):
            out = tmp_path / name / "head.safetensors"
            env = {k: v for k, v in os.environ.items() if k != "FROZENREP_WARM"} | ({"FROZENREP_WARM": warm} if warm else {})
            done = subprocess.run([PYTHON, "-m", "frozenrep.warm", str(REPO / "workflow_scripts/train.py"),
                                   "--spec", json.dumps(spec), "--checkpoint", str(root / "tiny.safetensors"),
                                   "--manifest", str(root / "k400.manifest.json"), "--out", str(out),
                                   "--curve", str(out.parent / "curve.csv"), "--metrics", str(out.parent / "m.json")],
                                  capture_output=True, text=True, env={**env, "MLFLOW_TRACKING_URI": ""}, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            heads[name] = out
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert f"train.py --out {heads['warm']}" in socket.with_suffix(".log").read_text()  # forked by the server
    a, b = load_file(str(heads["warm"])), load_file(str(heads["cold"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (heads["warm"].parent / "curve.csv").read_bytes() == (heads["cold"].parent / "curve.csv").read_bytes()
    assert metrics_of(heads["warm"].parent / "m.json") == metrics_of(heads["cold"].parent / "m.json")
