"""What frozenrep starts that listens on a port: the MLflow UI (a tracking server over the project's store).

It binds to 127.0.0.1 unless the user names another address: MLflow's server has no authentication, so
exposing it is a decision the user makes on purpose (``--host 0.0.0.0``), with a warning.

    frozenrep-mlflow-ui [--store sqlite:///mlruns.db] [--host 127.0.0.1] [--port 5000]
"""

from __future__ import annotations

import ipaddress
import sys

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
