"""Creating and writing drainer's own files (run lock, probe flag, metrics files, state database)
without ever following a symlink: ``O_NOFOLLOW`` on the file, ``O_EXCL`` temporary files with random
names, renames relative to an open directory descriptor, and explicit modes (not the umask's).

The directories these files live in are checked first (``ensure_dir``): one another user can write to
is refused, sticky or not, because a name planted there would redirect what root writes.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

from drainer.io.trust import check_dir

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class UnsafeFileError(OSError):
    """A file or directory drainer writes is not safe to write: the message says which and why."""


def ensure_dir(path: str | os.PathLike[str], mode: int = 0o750) -> None:
    """Check ``path`` (and its ancestors) with ``drainer.io.trust``, then create what is missing with
    ``mode``. Raises UnsafeFileError when it is refused, OSError when it cannot be created."""
    reason = check_dir(str(path))
    if reason:
        raise UnsafeFileError(f"refused: {reason}")
    Path(path).mkdir(mode=mode, parents=True, exist_ok=True)


def open_file(path: str | os.PathLike[str], flags: int, mode: int) -> int:
    """``os.open`` that refuses a symlink at ``path`` and anything but a regular file; a file it
    creates gets exactly ``mode``. Raises UnsafeFileError or OSError."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as exc:
        if _is_symlink(path):
            raise UnsafeFileError(f"{path} is a symlink; drainer does not write through one") from exc
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{path} is not a regular file")
    if sys.platform != "win32" and stat.S_IMODE(info.st_mode) != mode and info.st_uid == os.geteuid():
        os.fchmod(fd, mode)
    return fd


def _is_symlink(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: a new ``O_EXCL`` file under a random name in the same directory,
    written, synced, then renamed over ``path``. A symlink at ``path`` is refused (UnsafeFileError),
    never followed nor replaced; a write that fails (a full disk) leaves ``path`` as it was and no
    temporary file behind. Raises OSError."""
    import secrets  # noqa: PLC0415 - only when a file is written, never on the idle path

    target = Path(path)
    if sys.platform == "win32":  # pragma: no cover - no dir_fd on Windows
        temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        temp.replace(target)
        return
    directory = os.open(target.parent, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    temp = f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(target.name, dir_fd=directory).st_mode):
                raise UnsafeFileError(f"{target} is a symlink; drainer does not write through one")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        fd = os.open(temp, flags, mode, dir_fd=directory)
        try:
            try:
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target.name, src_dir_fd=directory, dst_dir_fd=directory)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=directory)
            raise
    finally:
        os.close(directory)
