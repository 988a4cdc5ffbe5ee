"""The last successful check, as the mtime of a small file: no database write when idle. Kept apart
from drainer.app.runner so that `status` imports no HTTP client."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

LAST_CHECK_FILE = "last-check"


def touch_last_check(state_dir: str) -> None:
    """Record a successful check as the mtime of a small file: no database write when idle. Never
    through a planted symlink. Raises UnsafeFileError, OSError."""
    from drainer.io.safefile import open_file  # noqa: PLC0415

    descriptor = open_file(Path(state_dir) / LAST_CHECK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.utime(descriptor if os.utime in os.supports_fd else Path(state_dir) / LAST_CHECK_FILE)
    finally:
        os.close(descriptor)


def last_check(state_dir: str) -> datetime | None:
    try:
        mtime = (Path(state_dir) / LAST_CHECK_FILE).stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(mtime, timezone.utc)


__all__ = ["LAST_CHECK_FILE", "last_check", "touch_last_check"]
