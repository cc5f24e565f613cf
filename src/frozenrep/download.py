"""Fetching files: resumable HTTP(S) downloads with retries, local ``file:`` sources, checksums.

A download goes to ``<dest>.part``; an interrupted one resumes from there with an HTTP Range
request; the finished file is verified (sha256 or md5) and only then renamed onto ``dest``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from frozenrep.io import file_digest
from frozenrep.progress import Progress, log

CHUNK = 1 << 16  # small enough that a cut connection loses little of what arrived
MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is waited this long, then the request goes again


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the source and what to do."""


class ChecksumError(DownloadError):
    """A fetched file's content does not match its expected hash."""


def local_source_path(source: str) -> Path:
    """Path of a ``file:`` source: ``file:relative/path`` (to the working directory) or ``file:///abs``."""
    parsed = urlparse(source)
    if parsed.scheme != "file":
        raise ValueError(f"not a file: source: {source!r}")
    if source.startswith("file://"):
        return Path(unquote(parsed.path))
    return Path(unquote(source[len("file:"):]))


def verify_digest(path: Path, expected: str, algorithm: str, source: str) -> str:
    """Check ``path`` against ``expected``; on a mismatch remove it and raise ChecksumError."""
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{algorithm} mismatch for {path.name} from {source}: expected {expected}, got {actual}. "
            "The file was removed. If the source changed on purpose, update the hash in the registry; "
            "otherwise fetch again (the download may have been corrupted)."
        )
    return actual


def fetch(source: str, dest: str | os.PathLike[str], *, sha256: str | None = None, md5: str | None = None,
          retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> str:
    """Fetch ``source`` (https://, http://, file:) to ``dest``, verify it and return its sha256.

    ``retries`` bounds the attempts after a connection error, a stalled or cut connection (no byte
    for ``timeout`` seconds), a 5xx or a 429 answer, waiting ``backoff * 2**k`` seconds between them,
    or what a 429's or 503's ``Retry-After`` asks for; each retry resumes where the last stopped.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    scheme = urlparse(source).scheme
    if scheme == "file":
        src = local_source_path(source)
        if not src.is_file():
            raise DownloadError(f"{source}: no such file {src}. Create it first (for the embedded default "
                                "its rule does) or fix the source in the registry.")
        shutil.copyfile(src, part)
    elif scheme in ("http", "https"):
        _download(source, part, retries=retries, backoff=backoff, timeout=timeout)
    else:
        raise DownloadError(f"unsupported source {source!r}: use https://, http:// or file:")
    if md5:
        verify_digest(part, md5, "md5", source)
    digest = verify_digest(part, sha256, "sha256", source) if sha256 else file_digest(part)
    os.replace(part, dest)
    return digest


def _download(url: str, part: Path, *, retries: int, backoff: float, timeout: float) -> None:
    attempt = 0
    while True:
        asked = None
        try:
            if _download_once(url, part, timeout=timeout):
                return
            reason = "the connection closed before the whole file arrived"
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            reason = f"{type(err).__name__}: {err}"
        except _RetryableStatus as err:
            reason, asked = str(err), err.retry_after
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        attempt += 1
        if attempt > retries:
            part.unlink(missing_ok=True)
            raise DownloadError(f"download of {url} failed after {retries} retries ({reason}). "
                                "Check the URL and your connection, then run the rule again.")
        wait = backoff * 2 ** (attempt - 1) if asked is None else min(asked, MAX_RETRY_AFTER)
        log.warning("download of %s interrupted (%s); retry %d/%d in %.1fs, resuming at %d bytes",
                    url, reason, attempt, retries, wait, part.stat().st_size if part.exists() else 0)
        time.sleep(wait)


class _RetryableStatus(Exception):
    """A 5xx or 429 answer; ``retry_after``: the seconds its Retry-After header asks for, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header: a number of seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def _download_once(url: str, part: Path, *, timeout: float) -> bool:
    """One request; append to ``part`` (resuming). True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            # Range past the end: the part file already holds the whole resource.
            return True
        if response.status_code >= 500 or response.status_code == 429:
            raise _RetryableStatus(f"HTTP {response.status_code} {response.reason}",
                                   _retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            raise DownloadError(f"download of {url} failed: HTTP {response.status_code} {response.reason}. "
                                "Check the URL in the registry or the dataset settings.")
        if response.status_code == 206:
            mode = "ab"
        else:  # 200: the server ignored the Range header; start over.
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        with open(part, mode) as handle, Progress(total, f"download {part.name[:-5]}", unit="B",
                                                  initial=offset, unit_scale=True) as progress:
            for chunk in response.iter_content(CHUNK):
                handle.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
        return total is None or received >= total
