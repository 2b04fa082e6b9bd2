"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedfhe_common.runtime.errors import IntegrityError


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file + rename so a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dir_atomic(directory: Path, produce: Callable[[Path], None], mode: int | None = None) -> Path:
    """``produce(tmp)`` fills a temp folder beside ``directory``, which then takes its place by rename.

    A reader sees the old folder or the new one, never half; a failure in
    ``produce`` leaves the old one untouched. The old folder is moved aside
    (``.NAME.old``) for the instant of the swap, as two renames cannot be one.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        produce(tmp)
        if mode is not None:
            tmp.chmod(mode)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
        fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_plain(path: Path | str, limit: int, dir_fd: int | None = None, where: Path | str | None = None) -> bytes:
    """The bytes of a plain file another user can write to, at most ``limit`` of them.

    A link (symbolic or hard), a FIFO or a device is refused before a byte is read: a process that
    reads files out of a directory another user writes (the release user reading what the ServerApp
    left) must not be steered into reading a file it alone may read, or block on a FIFO. With
    ``dir_fd`` (from ``open_dir``) ``path`` is a name inside that very directory; errors name ``where``.
    """
    where = where or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: the last component is a symbolic link
        what = "a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise IntegrityError(f"{where}: refused: {what}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{where}: refused: not a plain file")
        if st.st_nlink != 1:
            raise IntegrityError(f"{where}: refused: {st.st_nlink} hard links to it (a plain file has one)")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(f"{where}: refused: larger than {limit} bytes")
    return data


def open_dir(path: Path) -> int:
    """A descriptor of the directory ``path`` itself, not of what a link there points to (close it)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        what = "a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) and Path(path).is_symlink() \
            else (exc.strerror or str(exc))
        raise IntegrityError(f"{path}: refused: {what}") from None
