"""Safe archive extraction: every member is checked before anything is written.

A zip or tar member with an absolute path, a ``..`` component, or a link that points outside the
target directory makes the whole archive refused, with nothing extracted.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from frozenrep.progress import Progress


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction directory."""


def _check_name(archive: Path, name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract anything")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract anything")


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> list[str]:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive into ``target`` after checking every member.

    Returns the member names. Links are refused in zips and allowed in tars only when they stay
    inside ``target`` (tarfile's ``data`` filter).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(archive, info.filename)
                if _zip_is_symlink(info):
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; "
                                             "refusing to extract anything")
            with Progress(len(infos), f"extract {archive.name}", unit="file") as progress:
                for info in infos:
                    zf.extract(info, target)
                    progress.update()
            return [info.filename for info in infos]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            resolved = str(target.resolve())
            for member in members:
                _check_name(archive, member.name)
                try:
                    tarfile.data_filter(member, resolved)
                except tarfile.FilterError as err:
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} refused ({err}); "
                                             "refusing to extract anything") from err
            with Progress(len(members), f"extract {archive.name}", unit="file") as progress:
                for member in members:
                    tf.extract(member, target, filter="data")
                    progress.update()
            return [member.name for member in members]
    raise ValueError(f"{archive}: not a zip or tar archive. Remove it and fetch it again.")
