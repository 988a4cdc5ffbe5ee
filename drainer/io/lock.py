"""A lock file against overlapping runs; the kernel releases it when the process dies."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import TracebackType

from drainer.base.errors import LockedError, StateError
from drainer.io.safefile import UnsafeFileError, ensure_dir, open_file


class RunLock:
    """Exclusive, non-blocking lock on ``<state_dir>/lock`` (mode 0600, never through a symlink, in a
    state dir no other user can write to).

    Raises LockedError when another process holds it, StateError when the file cannot be opened.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
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

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

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

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
