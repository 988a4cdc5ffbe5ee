"""The state database's connection: opening (or creating and migrating) it, its transactions, the
``meta`` key-value table; ``drainer.store.tables`` and ``drainer.store.state`` build on it."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drainer.base.errors import StateError
from drainer.io.log import redact_text
from drainer.io.safefile import UnsafeFileError
from drainer.store.files import memory_copy, private_files
from drainer.store.schema import (
    _MIGRATIONS,
    _SCHEMA,
    DB_NAME,
    SCHEMA_VERSION,
    NewerSchemaError,
    StateRefusedError,
    db_error,
)


class Database:
    """One SQLite database in the state directory. Raises StateError when it cannot be opened."""

    def __init__(self, state_dir: str | os.PathLike[str], *, in_memory: bool = False) -> None:
        """Open (or create) the database. ``in_memory``: work on an in-memory copy (a dry run), so
        nothing at all is written to the state directory (not even a new, empty database).

        ``fresh`` tells whether the database was created (or was empty) just now: the local state was
        missing, and the caller reconciles with Azure. Raises StateError.
        """
        self.dir = Path(state_dir)
        self.path = self.dir / DB_NAME
        self.fresh = False
        self._cacheable = not in_memory
        try:
            if in_memory:
                self._db = memory_copy(self.path)
            else:
                private_files(self.dir, self.path)
                # Shared with the threads that write a VM's NICs at once (drainer.act.fanout), which
                # serialise every call through one lock.
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=10, check_same_thread=False
                )
                # WAL + FULL: a committed run survives power loss, not only a process crash.
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.row_factory = sqlite3.Row  # rows are read by column name
            self._file = None if in_memory else _file_id(self.path)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self.fresh = True
                with self._transaction():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version < SCHEMA_VERSION:
                with self._transaction():
                    for old in range(version, SCHEMA_VERSION):
                        for statement in _MIGRATIONS[old]:
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise NewerSchemaError(
                    f"{self.path}: schema version {version} is not {SCHEMA_VERSION} "
                    "(written by a newer drainer version)"
                )
        except sqlite3.Error as exc:
            raise db_error(self.path, "cannot open the state database", exc) from exc
        except UnsafeFileError as exc:
            raise StateRefusedError(f"{self.dir}: state dir: {exc}") from exc
        except OSError as exc:
            raise StateRefusedError(f"{self.dir}: cannot create the state directory: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def still_at_path(self) -> bool:
        """Whether the database file at the path is still the one this store has open (not moved
        aside, deleted or replaced since): a store kept open across runs is reused only then."""
        return self._file is not None and _file_id(self.path) == self._file

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A read that fails says so in one line (StateCorruptError when the database is damaged)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise db_error(self.path, "unreadable state", exc) from exc

    def _meta(self, key: str) -> str | None:
        with self._reading():
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def _meta_json(self, key: str, kind: type) -> Any:
        """A JSON value kept in ``meta``, or None when missing, unreadable or not of ``kind``."""
        try:
            raw = self._meta(key)
            data = json.loads(raw) if raw else None
        except (ValueError, StateError, RecursionError):
            return None
        return data if isinstance(data, kind) else None

    def _set_meta(self, values: dict[str, str]) -> None:
        """Write meta keys in one transaction (secrets masked: hook output, ARM errors). Raises
        StateError."""
        try:
            with self._transaction() as db:
                for key, value in values.items():
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, redact_text(value)))
        except sqlite3.Error as exc:
            raise db_error(self.path, "cannot save the state", exc) from exc


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)
