"""Which paths drainer trusts, checked the way OpenSSH's StrictModes checks them, and opened once.

drainer runs as root and reads or runs what these paths name: the config file, the hooks (their hooks
dir and phase dirs), ``restore.health_command``, the state dir and the probe flag dir. A path is
trusted when every component from ``/`` down to it is owned by root (or the user drainer runs as) and
is not writable by group or others. Symlinks are followed, and the directory holding each link is part
of the walk like any other component, so the link's target is checked too.

Directories writable by others:
- a directory that holds hooks (the hooks dir, a phase dir) or drainer's own files (the state dir, the
  flag dir) is refused, sticky or not: anyone could plant a name in it (a symlink to a root-owned
  program is enough to make root run that program);
- a sticky, root-owned *ancestor* such as ``/tmp`` is accepted, because its next component must be
  owned by root (or drainer's user) like every component, and the sticky bit stops others from
  renaming or replacing what they do not own.

Checked once, then used through the descriptor that was checked (``open_file``): the caller reads the
config from it, or runs the hook through ``/proc/self/fd`` (``exec_path``), so nothing can be swapped
between the check and the use. Windows: ACLs are not modelled; nothing is refused there.
"""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from pathlib import Path
from typing import NamedTuple

_MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup


class TrustError(Exception):
    """``path`` must not be trusted, for ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class Checked(NamedTuple):
    real: str  # the path with every symlink resolved
    info: os.stat_result  # lstat of the final object


def _owner_ok(info: os.stat_result) -> bool:
    return info.st_uid in (0, os.geteuid())


def _writable_by_others(info: os.stat_result) -> int:
    return info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _judge(path: str, info: os.stat_result, *, strict: bool) -> str | None:
    """Why this one component is not trusted, or None. ``strict``: writable by others is refused even
    when the directory is sticky."""
    mode = stat.S_IMODE(info.st_mode)
    if not _owner_ok(info):
        return f"owned by uid {info.st_uid}, neither root nor the user drainer runs as (uid {os.geteuid()})"
    if not _writable_by_others(info):
        return None
    who = "world" if info.st_mode & stat.S_IWOTH else "group"
    if stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX and not strict:
        if info.st_uid == 0:
            return None  # e.g. /tmp: what root owns below it cannot be replaced by others
        return f"{who}-writable sticky directory not owned by root (mode {mode:04o})"
    if stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX:
        return f"{who}-writable (mode {mode:04o}; sticky, but anyone could plant a file or a symlink in it)"
    return f"{who}-writable (mode {mode:04o})"


def check(path: str, *, strict_leaf: bool = True, strict_parent: bool = False) -> Checked:
    """Walk ``path`` from ``/``, following symlinks, and check every component.

    ``strict_leaf``: the final object (a directory drainer keeps files in, or a file) is refused when
    writable by others even if sticky. ``strict_parent``: so is the directory holding it (a phase dir).
    Raises TrustError naming the first component that fails and why.
    """
    if sys.platform == "win32":  # pragma: no cover - Windows only: ACLs are not modelled
        return Checked(str(Path(path).absolute()), Path(path).stat())
    pending = [c for c in posixpath.abspath(path).split("/") if c]
    current = "/"
    info = _lstat("/")
    reason = _judge("/", info, strict=not pending)
    if reason:
        raise TrustError("/", reason)
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = posixpath.dirname(current)  # already checked on the way down
            continue
        candidate = posixpath.join(current, name)
        info = _lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            # Whoever owns a symlink decides where it points (and can re-point it after the check):
            # as for any other component, only root or drainer's user may own one on a trusted path.
            if not _owner_ok(info):
                raise TrustError(
                    candidate,
                    f"a symlink owned by uid {info.st_uid}, neither root nor the user drainer runs as",
                )
            links += 1
            if links > _MAX_LINKS:
                raise TrustError(path, "too many levels of symbolic links")
            try:
                target = str(Path(candidate).readlink())
            except OSError as exc:
                raise TrustError(candidate, f"cannot read the symlink: {exc.strerror}") from exc
            if target.startswith("/"):
                current = "/"
            pending[:0] = [c for c in target.split("/") if c]
            continue
        last = not pending
        if not last and not stat.S_ISDIR(info.st_mode):
            raise TrustError(candidate, "not a directory")
        strict = (last and strict_leaf) or (strict_parent and _is_parent_of_leaf(pending))
        reason = _judge(candidate, info, strict=strict)
        if reason:
            raise TrustError(candidate, reason)
        current = candidate
    return Checked(current, info)


def _is_parent_of_leaf(pending: list[str]) -> bool:
    """True while checking the directory whose only remaining component is the final name (a link
    target's own components extend ``pending``, so this tracks where the real leaf lives)."""
    return len(pending) == 1


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise TrustError(path, f"cannot stat: {exc.strerror}") from exc


def open_file(path: str, *, strict_parent: bool = False) -> tuple[int, Checked]:
    """Check ``path`` (a regular file) and open it read-only: the descriptor is the checked file.

    The caller closes the descriptor. Raises TrustError.
    """
    checked = check(path, strict_leaf=True, strict_parent=strict_parent)
    if not stat.S_ISREG(checked.info.st_mode):
        raise TrustError(checked.real, "not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # a FIFO put there cannot block the open
    try:
        fd = os.open(checked.real, flags)
    except OSError as exc:
        raise TrustError(checked.real, f"cannot open: {exc.strerror}") from exc
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (checked.info.st_dev, checked.info.st_ino):
        os.close(fd)
        raise TrustError(checked.real, "replaced while it was being checked")
    return fd, checked


def read_file(path: str, limit: int = 1 << 20) -> bytes:
    """The contents of a trusted file, read from the descriptor that was checked. Raises TrustError."""
    fd, checked = open_file(path)
    try:
        data = os.read(fd, limit + 1)
        while data and len(data) <= limit:
            more = os.read(fd, limit + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise TrustError(checked.real, f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TrustError(checked.real, f"larger than {limit} bytes")
    return data


def exec_path(fd: int) -> str | None:
    """A path that executes exactly the file open as ``fd`` (Linux's /proc/self/fd), or None where
    there is none (the caller then runs the checked path)."""
    if sys.platform.startswith("linux") and Path("/proc/self/fd").is_dir():
        return f"/proc/self/fd/{fd}"
    return None  # pragma: no cover - other Unixes, Windows


def check_dir(path: str) -> str | None:
    """Why ``path`` (a directory drainer keeps its own files in: state dir, flag dir) must not be
    used, or None. A missing directory is judged by its nearest existing ancestor (drainer creates
    the rest with its own modes)."""
    probe = posixpath.abspath(path)
    while True:
        try:
            os.lstat(probe)
            break
        except FileNotFoundError:
            parent = posixpath.dirname(probe)
            if parent == probe:
                break
            probe = parent
        except OSError as exc:
            return f"{probe}: cannot stat: {exc.strerror}"
    try:
        checked = check(probe, strict_leaf=True)
    except TrustError as exc:
        return str(exc)
    if not stat.S_ISDIR(checked.info.st_mode):
        return f"{checked.real}: not a directory"
    return None


def find_program(name: str, search_path: str) -> str:
    """The file ``name`` runs as: itself when it contains a slash, else the first match on
    ``search_path`` (the PATH the program would get). Raises TrustError when there is none."""
    if "/" in name:
        return name
    import shutil  # noqa: PLC0415 - only for a configured command

    found = shutil.which(name, path=search_path)
    if found is None:
        raise TrustError(name, f"not found on PATH ({search_path})")
    return found
