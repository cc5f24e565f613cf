"""Warm job processes: one server imports the jobs' libraries once and forks a process per job.

A job of the embedded default spends seconds of its 20 to 60 before its first step importing
torch, torchvision (which imports ``torch._dynamo``), timm, MLflow and its task's libraries. The
head and table jobs start as ``python -m frozenrep.warm SCRIPT ARGS...``: a client that imports
nothing heavy. With ``warm_start: true`` in the profile, a local Snakemake run starts one server
(:func:`serve`) that imports those libraries once; the client hands it its arguments, working
directory, environment, umask and standard streams; the server forks, and the child runs the
script as ``python SCRIPT ARGS...`` would. The client relays the stop signals it gets to the child and ends as the child ended: with
its exit code, or killed by its signal. A client killed outright takes its child with it.

Without a server (``FROZENREP_WARM`` unset, the socket gone, the server refusing a job whose
interpreter settings differ from its own), the client replaces itself with ``python SCRIPT
ARGS...``: a job runs the same either way, warm or not.

The server is started by the Snakefile (``onstart``, only where jobs run on this machine), stops
with the run, and stops taking jobs when the Snakemake that started it dies (removing its socket,
and the socket's folder when that is left empty); children it forked run on to their end. It refuses to serve (and jobs run cold) when the preloaded libraries started
threads, since a process with threads cannot be forked safely.

This module imports only the standard library: the client must start in milliseconds.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

ENV = "FROZENREP_WARM"  # the server's socket path, set by the Snakefile for the jobs it starts
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT)
# what a job's interpreter took from its environment at start-up: a job whose values differ from the
# server's runs cold (the PYTHON* variables, the dynamic loader's)
STARTUP_PREFIXES = ("PYTHON", "LD_")
# what every head and table job imports (and the tasks' modules, with their declarations' `preload`)
BASE_PRELOAD = ("frozenrep.jobs", "frozenrep.tables", "frozenrep.pictures", "mlflow.tracking",
                "mlflow.store.tracking.sqlalchemy_store", "matplotlib.pyplot")


def startup_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES)}


# --- the client -------------------------------------------------------------------------------

def run(argv: list[str]) -> NoReturn:
    """Run ``python *argv`` through the server named by ``$FROZENREP_WARM``, or directly."""
    path = os.environ.get(ENV)
    if path and os.path.exists(path):
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
        except OSError:
            conn = None
        if conn is not None:
            _run_warm(conn, argv)  # returns only when the server refused the job
    os.execv(sys.executable, [sys.executable, *argv])


def _run_warm(conn: socket.socket, argv: list[str]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
               "executable": sys.executable}
    socket.send_fds(conn, [b"F"], [0, 1, 2])
    conn.sendall(json.dumps(request).encode() + b"\n")
    replies = conn.makefile("rb")
    first = json.loads(replies.readline() or b"{}")
    if "pid" not in first:  # refused (first["refused"] says why) or the server went away: run cold
        conn.close()
        return
    pid = first["pid"]
    for sig in RELAYED:
        signal.signal(sig, lambda signum, frame: _relay(pid, signum))
    line = replies.readline()
    status = json.loads(line) if line else {}
    if "exit" not in status:
        print(f"frozenrep.warm: the server ended before job {pid} did; its exit status is unknown",
              file=sys.stderr)
        while _alive(pid):
            time.sleep(0.5)
        os._exit(1)
    code = status["exit"]
    if code < 0:  # killed by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _relay(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the server -------------------------------------------------------------------------------

def preload(modules: list[str]) -> None:
    """Import ``modules`` (a failed import is reported and left to the jobs that need it)."""
    import matplotlib

    matplotlib.use("Agg")  # what frozenrep.pictures selects: no display
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 -- a job importing it will fail the same way, in its own log
            print(f"frozenrep.warm: preloading {name} failed ({type(err).__name__}: {err})", file=sys.stderr)


def task_modules(tasks: list[str]) -> list[str]:
    """The modules of ``tasks``' jobs: each task's module and what its declaration preloads."""
    from frozenrep.tasks import declaration

    return [module for task in tasks
            for module in (f"frozenrep.tasks.{task}", *declaration(task).preload)]


def serve(path: Path, modules: list[str]) -> int:
    """Preload ``modules``, then fork a child for every job a client sends to the socket at ``path``,
    until SIGTERM or the death of the process that started it; then remove the socket, and its folder
    if that is left empty; return once the last child ended."""
    parent = os.getppid()
    preload(modules)
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        print(f"frozenrep.warm: not serving: preloading started threads {threads}, and a process with threads "
              "cannot be forked safely; the jobs run cold", file=sys.stderr)
        return 1
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the clients, which relay it
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the loop through the pipe

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = path.with_name(path.name + ".part")
    partial.unlink(missing_ok=True)
    listener.bind(str(partial))
    listener.listen(64)
    os.replace(partial, path)  # clients find the socket only once the server takes jobs
    print(f"frozenrep.warm: serving on {path} ({len(sys.modules)} modules loaded)", file=sys.stderr, flush=True)
    startup = startup_environment(dict(os.environ))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    while True:
        if (stopping or os.getppid() != parent) and listener.fileno() >= 0:
            selector.unregister(listener)
            listener.close()
            path.unlink(missing_ok=True)
            try:  # the run's private folder, also when the run was killed and cannot remove it
                path.parent.rmdir()
            except OSError:  # not empty: not the server's alone
                pass
        if listener.fileno() < 0 and not children:
            return 0
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                pid = _start_job(conn, startup, [listener, selector, *children.values()], (wake_r, wake_w))
                if pid is not None:
                    children[pid] = conn
            else:
                os.read(wake_r, 4096)
        _reap(children)


def _start_job(conn: socket.socket, startup: dict[str, str], inherited: list[Any],
               wake: tuple[int, int]) -> int | None:
    """Read a client's request and fork its job; the child's pid (None: refused or broken).
    ``inherited``: the server's sockets and selector, which the child closes."""
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        request = json.loads(conn.makefile("rb").readline())
    except (OSError, ValueError):
        conn.close()
        return None
    refused = None
    if request["executable"] != sys.executable:
        refused = f"another interpreter ({request['executable']})"
    elif startup_environment(request["env"]) != startup:
        refused = "other interpreter settings (PYTHON*, LD_* variables)"
    if refused or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        _send(conn, {"refused": refused or "no standard streams"})
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(conn, fds, request, inherited, wake)
    for fd in fds:
        os.close(fd)
    argv = request["argv"]
    out = f" --out {argv[argv.index('--out') + 1]}" if "--out" in argv[:-1] else ""
    print(f"frozenrep.warm: job {pid}: {argv[0]}{out}", file=sys.stderr, flush=True)
    _send(conn, {"pid": pid})
    return pid


def _reap(children: dict[int, socket.socket]) -> None:
    """Send each ended child's exit status (negative: the signal that killed it) to its client."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            conn.close()


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the client is gone (killed); its child was taken with it
        pass


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any], inherited: list[Any],
           wake: tuple[int, int]) -> NoReturn:
    """The forked job: the client's streams, directory, environment and umask, the signal
    dispositions of a new interpreter, then the script as ``__main__``; ends like ``python SCRIPT``."""
    signal.set_wakeup_fd(-1)
    for fd in wake:
        os.close(fd)
    for server_side in inherited:
        server_side.close()
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(script))

    def client_gone() -> None:  # the client was killed: so is its job, as a process run directly would be
        while conn.recv(1):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=client_gone, daemon=True, name="frozenrep.warm client").start()
    code = 0
    try:
        import runpy

        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException as err:  # noqa: BLE001 -- what the interpreter does with an uncaught exception
        err.__traceback__ = _script_frames(err.__traceback__)  # the hook prints the exception's own
        sys.excepthook(type(err), err, err.__traceback__)
        if isinstance(err, KeyboardInterrupt):  # the interpreter ends by the signal, as Ctrl-C expects
            _finish()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        code = 1
    _finish()
    os._exit(code)


def _script_frames(tb: Any) -> Any:
    """A traceback from the script's first frame on, as ``python SCRIPT`` prints it (without this
    module's and runpy's frames)."""
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")):
        tb = tb.tb_next
    return tb


def _exit_code(code: Any) -> int:
    """``SystemExit.code`` as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """The interpreter's shutdown that matters to a job: its exit functions (logging, MLflow), then
    its buffered output."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m frozenrep.warm --serve", description=__doc__.splitlines()[0])
        parser.add_argument("--serve", type=Path, required=True, help="the socket to listen on")
        parser.add_argument("--tasks", nargs="*", default=[], help="the tasks whose modules to preload")
        options = parser.parse_args(args)
        sys.exit(serve(options.serve, [*BASE_PRELOAD, *task_modules(options.tasks)]))
    if not args:
        sys.exit("usage: python -m frozenrep.warm SCRIPT [ARGS...]  (or --serve SOCKET [--tasks ...])")
    run(args)


if __name__ == "__main__":
    main()
