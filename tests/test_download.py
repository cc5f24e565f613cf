"""Resumable downloads against a real loopback HTTP server: resume, retries, checksums."""

import hashlib

import pytest

from frozenrep.download import ChecksumError, DownloadError, fetch

BODY = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_verifies_and_renames(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY)
    dest = tmp_path / "w.bin"
    assert fetch(url, dest, sha256=sha(BODY)) == sha(BODY)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "w.bin.part").exists()


def test_cut_connection_resumes_with_range(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY, cut_after=300_000, cut_times=2)
    dest = tmp_path / "w.bin"
    fetch(url, dest, sha256=sha(BODY), backoff=0.01)
    assert dest.read_bytes() == BODY
    ranges = http_server.routes["/w.bin"].requests
    offsets = [int(r.split("=")[1].rstrip("-")) for r in ranges[1:]]
    assert ranges[0] is None and len(offsets) == 2
    # each retry resumes from what had arrived (up to the last whole chunk), never from zero
    assert 0 < offsets[0] <= 300_000 and offsets[0] < offsets[1] <= offsets[0] + 300_000


def test_partial_file_from_a_killed_run_is_resumed(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY)
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(BODY[:123_456])
    fetch(url, dest, sha256=sha(BODY))
    assert dest.read_bytes() == BODY
    assert http_server.routes["/w.bin"].requests == ["bytes=123456-"]


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY, ignore_range=True)
    (tmp_path / "w.bin.part").write_bytes(b"garbage" * 10)
    fetch(url, tmp_path / "w.bin", sha256=sha(BODY))
    assert (tmp_path / "w.bin").read_bytes() == BODY


def test_server_errors_are_retried_then_succeed(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY, fail_times=2)
    fetch(url, tmp_path / "w.bin", sha256=sha(BODY), backoff=0.01)
    assert len(http_server.routes["/w.bin"].requests) == 3


def test_persistent_server_error_fails_after_bounded_retries(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY, fail_times=100)
    with pytest.raises(DownloadError, match=r"failed after 3 retries \(HTTP 500"):
        fetch(url, tmp_path / "w.bin", retries=3, backoff=0.01)
    assert len(http_server.routes["/w.bin"].requests) == 4
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()


def test_not_found_fails_at_once(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(http_server.base + "/missing.bin", tmp_path / "m.bin", retries=3, backoff=0.01)


def test_checksum_mismatch_removes_file_and_names_both_hashes(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        fetch(url, tmp_path / "w.bin", sha256=wrong)
    message = str(info.value)
    assert wrong in message and sha(BODY) in message and "w.bin" in message
    assert list(tmp_path.iterdir()) == []


def test_md5_checked_for_dataset_archives(http_server, tmp_path):
    url = http_server.add("/a.zip", BODY)
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        fetch(url, tmp_path / "a.zip", md5="0" * 32)
    fetch(url, tmp_path / "a.zip", md5=hashlib.md5(BODY).hexdigest())
    assert (tmp_path / "a.zip").exists()


def test_file_source_copies_and_verifies(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(BODY)
    fetch(f"file:{src}", tmp_path / "out" / "x.bin", sha256=sha(BODY))
    assert (tmp_path / "out" / "x.bin").read_bytes() == BODY
    with pytest.raises(DownloadError, match="no such file"):
        fetch(f"file:{tmp_path / 'nope.bin'}", tmp_path / "y.bin")


def test_range_past_the_end_of_a_complete_partial_file_is_done(http_server, tmp_path):
    """A run killed between the last byte and the rename leaves a whole .part: the server answers
    the resume with 416, and the file is verified and renamed, not fetched again."""
    url = http_server.add("/w.bin", BODY)
    (tmp_path / "w.bin.part").write_bytes(BODY)
    fetch(url, tmp_path / "w.bin", sha256=sha(BODY), retries=0)
    assert (tmp_path / "w.bin").read_bytes() == BODY
    assert http_server.routes["/w.bin"].requests == [f"bytes={len(BODY)}-"]


def test_too_many_requests_waits_what_retry_after_asks(http_server, tmp_path, monkeypatch):
    import frozenrep.download as download

    waits = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    url = http_server.add("/w.bin", BODY, fail_times=2, status=429, retry_after="7")
    fetch(url, tmp_path / "w.bin", sha256=sha(BODY), backoff=0.01)
    assert waits == [7.0, 7.0] and (tmp_path / "w.bin").read_bytes() == BODY
    # without the header, the backoff
    url = http_server.add("/v.bin", BODY, fail_times=2, status=429)
    fetch(url, tmp_path / "v.bin", sha256=sha(BODY), backoff=0.25)
    assert waits[2:] == [0.25, 0.5]


def test_a_stalled_connection_times_out_and_resumes(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY, stall_after=200_000, stall_times=1, stall_seconds=1.5)
    fetch(url, tmp_path / "w.bin", sha256=sha(BODY), backoff=0.01, timeout=0.5)
    assert (tmp_path / "w.bin").read_bytes() == BODY
    ranges = http_server.routes["/w.bin"].requests
    assert ranges[0] is None and len(ranges) == 2 and 0 < int(ranges[1].split("=")[1].rstrip("-")) <= 200_000


def test_a_server_that_always_sends_less_than_content_length_fails_after_bounded_retries(http_server, tmp_path):
    url = http_server.add("/w.bin", BODY, cut_after=1000, cut_times=100)
    with pytest.raises(DownloadError, match=r"failed after 2 retries"):
        fetch(url, tmp_path / "w.bin", sha256=sha(BODY), retries=2, backoff=0.01)
    assert len(http_server.routes["/w.bin"].requests) == 3
    assert list(tmp_path.iterdir()) == []  # no short file left, nor a part file
