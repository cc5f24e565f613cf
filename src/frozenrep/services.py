"""What frozenrep starts that listens on a port: the MLflow UI (a tracking server over the project's store).

It binds to 127.0.0.1 unless the user names another address: MLflow's server has no authentication, so
exposing it is a decision the user makes on purpose (``--host 0.0.0.0``), with a warning.

    python -m frozenrep.services mlflow-ui [--store sqlite:///mlruns.db] [--host 127.0.0.1] [--port 5000]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from frozenrep.progress import log, setup_logging
from frozenrep.tracking import resolve_uri

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def mlflow_ui_command(store: str | None = None, host: str = LOOPBACK, port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line over ``store`` (the resolved tracking URI by default)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", resolve_uri(store), "--host", host,
            "--port", str(port), "--workers", "1"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frozenrep.services", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="service", required=True)
    ui = sub.add_parser("mlflow-ui", help="the MLflow UI over the project's tracking store")
    ui.add_argument("--store", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    ui.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    setup_logging()
    if not is_loopback(args.host):
        log.warning("the MLflow UI will listen on %s: anyone who can reach this machine can read and change runs "
                    "(MLflow has no authentication). Use the default 127.0.0.1 and an SSH tunnel instead.", args.host)
    command = mlflow_ui_command(args.store, args.host, args.port)
    log.info("MLflow UI on http://%s:%d over %s", args.host, args.port, command[5])
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
