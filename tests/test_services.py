"""Services: what frozenrep starts that listens (the MLflow UI) binds to 127.0.0.1 unless told otherwise."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from frozenrep.services import LOOPBACK, mlflow_ui_command


def free_port():
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def listening_addresses(port):
    """Local addresses of the sockets listening on ``port``, read from the kernel's tables."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def non_loopback_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_mlflow_ui_listens_on_loopback_only(tmp_path):
    port = free_port()
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    process = subprocess.Popen([str(Path(sys.executable).parent / "frozenrep-mlflow-ui"), "--store", store,
                                "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=2) as response:
                    status = response.status
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, "the MLflow UI did not come up: " + (process.stdout.read().decode()
                                                                   if process.poll() is not None else "still starting")
        addresses = listening_addresses(port)
        assert addresses and all(a == "0100007F" for a in addresses), addresses  # 127.0.0.1, nothing else
        other = non_loopback_address()
        if other is not None:  # from this machine's own network address, nobody answers
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_command_binds_loopback_by_default_and_passes_an_explicit_host():
    command = mlflow_ui_command("sqlite:///x.db", port=5123)
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "5123"
    assert mlflow_ui_command("sqlite:///x.db", host="0.0.0.0")[command.index("--host") + 1] == "0.0.0.0"


def test_exposing_the_ui_warns(capfd, monkeypatch):
    from frozenrep.cli import mlflow_ui

    monkeypatch.setattr(mlflow_ui.os, "execv", lambda *args: None)  # stop before starting the server
    mlflow_ui.main(["--host", "0.0.0.0", "--store", "sqlite:///x.db"])
    assert "MLflow has no authentication" in capfd.readouterr().err
    mlflow_ui.main(["--store", "sqlite:///x.db"])
    assert "no authentication" not in capfd.readouterr().err
