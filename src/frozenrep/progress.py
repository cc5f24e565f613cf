"""Progress reporting: a tqdm bar on a terminal, plain log lines elsewhere (Snakemake logs, CI)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("frozenrep")


def setup_logging(level: int = logging.INFO) -> None:
    """Send frozenrep's log lines to stderr with timestamps (idempotent)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """A progress bar that degrades to a log line every ``log_every`` seconds when not on a terminal.

    ``enabled=False`` counts silently (the other ranks of a distributed job).
    """

    def __init__(self, total: float | None, desc: str, unit: str = "it", initial: float = 0,
                 unit_scale: bool = False, log_every: float = 10.0, enabled: bool = True) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.n = initial
        self._start_n = initial
        self._start = self._last = time.monotonic()
        self._log_every = log_every
        self._postfix: dict[str, Any] = {}
        self._bar = (tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
                          dynamic_ncols=True, file=sys.stderr) if enabled and on_terminal() else None)

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.n += n
        self._postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self._log_every:
            self._last = now
            self._log_line()

    def _log_line(self) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        done = f"{self.n:.0f}/{self.total:.0f}" if self.total else f"{self.n:.0f}"
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self._postfix.items())
        log.info("%s: %s %s (%.2f %s/s) %s", self.desc, done, self.unit, rate, self.unit, extra)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._log_line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
