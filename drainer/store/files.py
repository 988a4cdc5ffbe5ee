"""The state directory's files: private files for the database, the dry run's in-memory copy,
setting a database aside, and the probe's read-only look at the drain state."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from drainer.base.errors import StateError
from drainer.io.safefile import ensure_dir
from drainer.io.safefile import open_file as safe_open
from drainer.store.schema import DB_NAME


def set_aside(state_dir: Path, label: str) -> str:
    """Move the database (and its WAL files) aside as ``state.db.<label>-<time>``; returns that name.
    Raises StateError."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = f"{DB_NAME}.{label}-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = state_dir / (DB_NAME + suffix)
        if source.exists():
            try:
                source.replace(state_dir / (target + suffix))
            except OSError as exc:
                raise StateError(f"{source}: cannot be moved aside: {exc}") from exc
    return target


def private_files(directory: Path, db: Path) -> None:
    """A state dir no other user can write to; the database and its WAL files mode 0600 and never
    symlinks (SQLite itself would follow one). Raises UnsafeFileError, OSError."""
    ensure_dir(directory)
    os.close(safe_open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("-wal", "-shm", "-journal"):
        side = db.with_name(db.name + suffix)
        if side.is_symlink() or side.exists():
            os.close(safe_open(side, os.O_RDWR, 0o600))


def memory_copy(path: Path) -> sqlite3.Connection:
    """An in-memory copy of the database at ``path`` (empty when there is none). The files are
    copied to a private temporary directory first: even a read-only open of a WAL database may write
    its ``-shm`` file, and a dry run writes nothing at all to the state directory."""
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)  # see act.fanout
    if not path.exists():
        return memory
    with tempfile.TemporaryDirectory(prefix="drainer-dry-run-") as scratch:
        for suffix in ("", "-wal"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                shutil.copyfile(source, Path(scratch) / (DB_NAME + suffix))
        source_db = sqlite3.connect(Path(scratch) / DB_NAME)
        try:
            source_db.backup(memory)
        finally:
            source_db.close()
    return memory


def read_drain_state(state_dir: str) -> str | None:
    """The persisted drain state, read-only and without waiting more than a second (the probe's
    readiness answer); None when there is no state or it cannot be read this instant."""
    try:
        db = sqlite3.connect(f"file:{Path(state_dir) / DB_NAME}?mode=ro", uri=True, timeout=1)
        db.row_factory = sqlite3.Row
        try:
            row = db.execute("SELECT drain_state FROM vm WHERE id = 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return None if row is None else str(row["drain_state"])
