"""The state database's schema: tables, migrations, and how a row becomes a record and back (rows
are read by column name). Only ``drainer.store`` reads or writes these tables."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any, NamedTuple

from drainer.base.errors import StateError
from drainer.base.events import EventStatus, EventType, ScheduledEvent
from drainer.config import Config
from drainer.decide.model import EventRecord, EventState, Transition
from drainer.io.log import redact_text

SCHEMA_VERSION = 6
DB_NAME = "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    key TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_status TEXT NOT NULL,
    not_before TEXT,
    duration INTEGER,
    resources TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    source TEXT NOT NULL,
    description TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    cleared_at TEXT,
    left_rotation_at TEXT,
    approved_at TEXT,
    returned_at TEXT,
    approval TEXT NOT NULL DEFAULT '',
    drain_boot TEXT,
    started_mono REAL,
    started_boot TEXT,
    gate_since REAL,
    impacts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vm (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    drain_state TEXT NOT NULL,
    since TEXT,
    held_by TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    held TEXT NOT NULL DEFAULT '',
    manual INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    last_reconcile_at TEXT,
    last_reconcile TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS absent (
    resource_id TEXT PRIMARY KEY,
    first_at TEXT NOT NULL,
    reads INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    method TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    item TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (method, resource_id, item, kind, target)
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, cleared_at);
CREATE INDEX IF NOT EXISTS history_by_time ON history (at);
"""


# Upgrades from older schema versions, applied in order in one transaction.
_MIGRATIONS = {
    1: [
        "ALTER TABLE vm ADD COLUMN held TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE vm ADD COLUMN manual INTEGER NOT NULL DEFAULT 0",
        "CREATE TABLE IF NOT EXISTS ledger (method TEXT NOT NULL, resource_id TEXT NOT NULL, "
        "item TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL, "
        "recorded_at TEXT NOT NULL, PRIMARY KEY (method, resource_id, item, kind, target))",
    ],
    2: [
        "ALTER TABLE events ADD COLUMN left_rotation_at TEXT",
        "ALTER TABLE events ADD COLUMN approved_at TEXT",
        "ALTER TABLE events ADD COLUMN returned_at TEXT",
        "ALTER TABLE events ADD COLUMN approval TEXT NOT NULL DEFAULT ''",
    ],
    3: ["ALTER TABLE vm ADD COLUMN last_attempt_at TEXT"],
    4: [
        "ALTER TABLE vm ADD COLUMN last_reconcile_at TEXT",
        "ALTER TABLE vm ADD COLUMN last_reconcile TEXT NOT NULL DEFAULT ''",
        "CREATE TABLE IF NOT EXISTS absent (resource_id TEXT PRIMARY KEY, first_at TEXT NOT NULL, "
        "reads INTEGER NOT NULL)",
    ],
    # restore_when = "recovered" (drainer.decide.recovery).
    5: [
        "ALTER TABLE events ADD COLUMN drain_boot TEXT",
        "ALTER TABLE events ADD COLUMN started_mono REAL",
        "ALTER TABLE events ADD COLUMN started_boot TEXT",
        "ALTER TABLE events ADD COLUMN gate_since REAL",
        "ALTER TABLE events ADD COLUMN impacts INTEGER NOT NULL DEFAULT 0",
        # The hot path loads open events only; retention prunes by age and count (issue 14).
        "CREATE INDEX IF NOT EXISTS events_by_state ON events (state, cleared_at)",
        "CREATE INDEX IF NOT EXISTS history_by_time ON history (at)",
    ],
}


# The events table's columns, named once: rows are written and read in this order.
_EVENT_COLUMNS = (
    "key, event_id, event_type, event_status, not_before, duration, resources, resource_type, source,"
    " description, state, reason, first_seen, last_seen, updated_at, started_at, cleared_at,"
    " left_rotation_at, approved_at, returned_at, approval, drain_boot, started_mono, started_boot,"
    " gate_since, impacts"
)
_EVENT_PLACEHOLDERS = ",".join("?" * 26)
_OPEN_STATES = ",".join(f"'{s.value}'" for s in EventState if s is not EventState.CLEARED)
# Fixed column lists, no outside text in them.
_EVENT_SELECT = " ".join(("SELECT", _EVENT_COLUMNS, "FROM events"))
_EVENT_INSERT = " ".join(
    ("INSERT OR REPLACE INTO events (", _EVENT_COLUMNS, ") VALUES (", _EVENT_PLACEHOLDERS, ")")
)


class LedgerEntry(NamedTuple):
    """One change drainer made outside itself and must undo: recorded *before* the change is made.

    ``nic`` method: ``resource_id`` is the NIC, ``item`` its ipConfiguration, ``kind`` ``lb-pool`` or
    ``appgw-pool`` and ``target`` the pool id. ``admin-state`` method: ``resource_id`` is the pool,
    ``item`` the backend address name, ``kind`` ``admin-state`` and ``target`` the previous value.
    ``status``: ``removing`` (recorded, write not yet confirmed) or ``removed`` (write confirmed).
    """

    method: str
    resource_id: str
    item: str
    kind: str
    target: str
    status: str = "removing"

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.method, self.resource_id, self.item, self.kind, self.target)


class HistoryEntry(NamedTuple):
    seq: int
    at: datetime
    transition: Transition


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def need_dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


class Retention(NamedTuple):
    """How much the database keeps (``[retention]`` and ``[policy] retention_days``)."""

    cleared_days: int = 30
    cleared_events: int = 1000
    history_days: int = 365
    history_rows: int = 20000

    @classmethod
    def of(cls, config: Config) -> Retention:
        """What a save that adds history lines prunes, as the config says."""
        return cls(
            cleared_days=config.policy.retention_days,
            cleared_events=config.retention.cleared_events,
            history_days=config.retention.history_days,
            history_rows=config.retention.history_rows,
        )


class StateRefusedError(StateError):
    """The state cannot be used as it is and must not be rebuilt (a planted symlink, a directory
    others can write to, a database of a newer drainer): the run stops, saying why."""


class StateCorruptError(StateError):
    """The database is damaged (a malformed page, not a database, rows this version cannot read):
    it is moved aside and rebuilt, then reconciled with Azure."""


def db_error(path: object, what: str, exc: Exception) -> StateError:
    """One line for a failed database call, typed by cause: damage (SQLite's CORRUPT and NOTADB,
    which Python raises as plain DatabaseError; a missing table or column; a row this version
    cannot read) is a StateCorruptError; anything else (a full disk, an I/O error, a lock) is not,
    and the database is left as it is."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    damaged = (
        type(exc) is sqlite3.DatabaseError
        or isinstance(exc, (ValueError, KeyError, TypeError))
        or (
            isinstance(exc, sqlite3.OperationalError) and text.startswith(("no such table", "no such column"))
        )
    )
    if damaged:
        return StateCorruptError(
            f"{path}: the state database is damaged ({what}: {text}); a check sets it aside and "
            "rebuilds it from Azure"
        )
    return StateError(f"{path}: {what}: {text}")


class NewerSchemaError(StateRefusedError):
    """The database was written by a newer drainer: never moved aside or rebuilt."""


def record_to_row(key: str, record: EventRecord) -> tuple[Any, ...]:
    e = record.event
    return (
        key,
        e.event_id,
        e.event_type.value,
        e.status.value,
        ts(e.not_before),
        e.duration_seconds,
        json.dumps(list(e.resources)),
        e.resource_type,
        e.source,
        e.description,
        record.state.value,
        redact_text(record.reason),
        ts(record.first_seen),
        ts(record.last_seen),
        ts(record.updated_at),
        ts(record.started_at),
        ts(record.cleared_at),
        ts(record.left_rotation_at),
        ts(record.approved_at),
        ts(record.returned_at),
        record.approval,
        record.drain_boot,
        record.started_mono,
        record.started_boot,
        record.gate_since,
        record.impacts,
    )


def record_from_row(row: sqlite3.Row) -> EventRecord:
    event = ScheduledEvent(
        event_id=row["event_id"],
        event_type=EventType(row["event_type"]),
        status=EventStatus(row["event_status"]),
        not_before=dt(row["not_before"]),
        duration_seconds=row["duration"],
        resources=tuple(json.loads(row["resources"])),
        resource_type=row["resource_type"],
        source=row["source"],
        description=row["description"],
    )
    return EventRecord(
        event=event,
        state=EventState(row["state"]),
        reason=row["reason"],
        first_seen=need_dt(row["first_seen"]),
        last_seen=need_dt(row["last_seen"]),
        updated_at=need_dt(row["updated_at"]),
        started_at=dt(row["started_at"]),
        cleared_at=dt(row["cleared_at"]),
        left_rotation_at=dt(row["left_rotation_at"]),
        approved_at=dt(row["approved_at"]),
        returned_at=dt(row["returned_at"]),
        approval=row["approval"],
        drain_boot=row["drain_boot"],
        started_mono=row["started_mono"],
        started_boot=row["started_boot"],
        gate_since=row["gate_since"],
        impacts=int(row["impacts"]),
    )
