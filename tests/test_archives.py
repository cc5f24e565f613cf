"""Archive extraction refuses anything that would land outside the target directory."""

import io
import stat
import tarfile
import zipfile

import pytest

from frozenrep.archives import UnsafeArchiveError, extract


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)


def test_good_zip_extracts(tmp_path):
    make_zip(tmp_path / "a.zip", [("annotations/x.json", "{}"), ("train2017/1.jpg", "img")])
    names = extract(tmp_path / "a.zip", tmp_path / "out")
    assert sorted(names) == ["annotations/x.json", "train2017/1.jpg"]
    assert (tmp_path / "out/annotations/x.json").read_text() == "{}"


@pytest.mark.parametrize("bad", ["../evil.txt", "/tmp/evil-abs.txt", "ok/../../evil.txt"])
def test_zip_with_escaping_member_extracts_nothing(tmp_path, bad):
    make_zip(tmp_path / "a.zip", [("fine.txt", "x"), (bad, "evil")])
    with pytest.raises(UnsafeArchiveError, match="refusing to extract anything"):
        extract(tmp_path / "a.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract(tmp_path / "a.zip", tmp_path / "out")


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def tar_member(kind):
    if kind in ("absolute", "dotdot"):
        info = tarfile.TarInfo("/tmp/evil-abs" if kind == "absolute" else "videos/../../evil")
        info.size = 1
        return info, b"x"
    info = tarfile.TarInfo("videos/escape")
    info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
    info.linkname = "../../../etc/passwd" if kind == "symlink" else "/etc/passwd"
    return info, None


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "hardlink"])
def test_tar_member_or_link_outside_is_refused(tmp_path, kind):
    good = tarfile.TarInfo("videos/a.mp4")
    good.size = 3
    make_tar(tmp_path / "a.tar.gz", [(good, b"abc"), tar_member(kind)])
    with pytest.raises(UnsafeArchiveError, match="refusing to extract anything"):
        extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_tar_dotdot_is_refused_and_good_tar_extracts(tmp_path):
    bad = tarfile.TarInfo("../evil")
    bad.size = 1
    make_tar(tmp_path / "bad.tar.gz", [(bad, b"x")])
    with pytest.raises(UnsafeArchiveError):
        extract(tmp_path / "bad.tar.gz", tmp_path / "out")
    good = tarfile.TarInfo("k400/train/a.mp4")
    good.size = 2
    make_tar(tmp_path / "good.tar.gz", [(good, b"ok")])
    extract(tmp_path / "good.tar.gz", tmp_path / "out")
    assert (tmp_path / "out/k400/train/a.mp4").read_bytes() == b"ok"
    assert not (tmp_path / "evil").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip or tar"):
        extract(tmp_path / "x.zip", tmp_path / "out")


def test_a_dataset_extraction_killed_midway_is_redone_whole_on_the_next_run(tmp_path):
    """SIGKILL while a dataset archive is being extracted: nothing half-extracted is taken for the
    dataset, and the next run extracts it whole (download_and_extract, as the dataset rule runs it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from frozenrep.data import download_and_extract

    members = [(f"set/images/{k:05d}.bin", os.urandom(2048)) for k in range(6000)]
    make_zip(tmp_path / "set.zip", members)
    root, downloads = tmp_path / "data" / "set", tmp_path / "downloads"
    code = ("import sys; from frozenrep.data import download_and_extract; "
            "download_and_extract(sys.argv[1], [{'url': 'file:' + sys.argv[2]}], sys.argv[3], lambda p: None, 'set')")
    process = subprocess.Popen([sys.executable, "-c", code, str(root), str(tmp_path / "set.zip"), str(downloads)])
    partial = root.with_name("set.tmp") / "set" / "images"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list(partial.glob("*")) if partial.is_dir()
                                                                          else []) < 50:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    assert not root.exists() and root.with_name("set.tmp").is_dir()  # half-extracted, beside the dataset only

    download_and_extract(root, [{"url": f"file:{tmp_path / 'set.zip'}"}], downloads, lambda p: None, "set")
    assert sorted(p.name for p in (root / "images").iterdir()) == [name.split("/")[-1] for name, _ in members]
    assert all((root / "images" / name.split("/")[-1]).read_bytes() == data for name, data in members[::500])
    assert not root.with_name("set.tmp").exists()
