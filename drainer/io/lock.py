"""A lock file against overlapping runs; the kernel releases it when the process dies."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from drainer.base.errors import LockedError, StateError
from drainer.io.safefile import UnsafeFileError, ensure_dir, open_file


class RunLock:
    """Exclusive, non-blocking lock on ``<state_dir>/lock`` (mode 0600, never through a symlink, in a
    state dir no other user can write to).

    Raises LockedError when another process holds it, StateError when the file cannot be opened.

    ``keep`` (the daemon): the descriptor stays open between runs and only the lock is dropped, so a
    poll costs one flock instead of the directory checks and an open; it is reopened, checked as on a
    first open, when the file at the path is no longer the one held and at least every ``recheck``
    seconds.
    """

    def __init__(
        self, state_dir: str | os.PathLike[str], *, keep: bool = False, recheck: float = 60.0
    ) -> None:
        self.path = Path(state_dir) / "lock"
        self._fd: int | None = None
        self._keep = keep and sys.platform != "win32"
        self._recheck = recheck
        self._kept: int | None = None
        self._opened = 0.0

    def acquire(self) -> None:
        if self._kept is not None:
            if time.monotonic() - self._opened < self._recheck and _same_file(self._kept, self.path):
                try:
                    _lock(self._kept)
                except OSError as exc:
                    holder = _read_holder(self._kept)
                    raise LockedError(
                        f"another drainer run holds {self.path}{holder}; this run exits without acting"
                    ) from exc
                self._fd = self._kept
                return
            os.close(self._kept)
            self._kept = None
        try:
            ensure_dir(self.path.parent)
            fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except UnsafeFileError as exc:
            raise StateError(f"{self.path.parent}: state dir: {exc}") from exc
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the lock file: {exc.strerror}") from exc
        try:
            _lock(fd)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"another drainer run holds {self.path}{holder}; this run exits without acting"
            ) from exc
        mine = f"{os.getpid()}\n".encode()
        # The pid is for people; the lock itself is the flock, held. Written over the old pid, then
        # cut to length: a full disk leaves the old one whole. (The daemon's every poll would rewrite
        # the same pid: only a different one is written.)
        with contextlib.suppress(OSError):
            if (
                os.read(fd, 32) != mine
                and os.lseek(fd, 0, os.SEEK_SET) == 0
                and os.write(fd, mine) == len(mine)
            ):
                os.ftruncate(fd, len(mine))
        self._fd = fd
        if self._keep:
            self._kept, self._opened = fd, time.monotonic()

    def release(self) -> None:
        if self._fd is not None:
            if self._fd == self._kept:
                _unlock(self._fd)
            else:
                os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def close(self) -> None:
        """Unlock and close the kept descriptor too (the process is about to go)."""
        self.release()
        if self._kept is not None:
            os.close(self._kept)
            self._kept = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (not moved, deleted or replaced)."""
    try:
        held, named = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.close(fd)  # never kept on Windows

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
