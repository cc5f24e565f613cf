"""``frozenrep-mlflow-ui``: the MLflow UI over the project's tracking store (127.0.0.1 by default)."""

from __future__ import annotations

import argparse
import os

from frozenrep.progress import log, setup_logging
from frozenrep.services import LOOPBACK, is_loopback, mlflow_ui_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="frozenrep-mlflow-ui", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--store", default=None,
                        help="tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=5000)
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
