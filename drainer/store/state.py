"""The persisted state: one SQLite database in the state directory.

Tables: ``events`` (one row per EventId, updated in place as its status changes), ``vm`` (the drain
state of this VM), ``history`` (append-only transitions) and ``meta`` (schema version, incarnation,
boot id, cached VM identity, last successful check). Every save is one transaction, so a run killed at
any point leaves either the old or the new state, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from drainer.base.errors import StateError
from drainer.base.events import EventStatus, EventType, ScheduledEvent
from drainer.decide.core import DrainState, EventRecord, EventState, State, Transition, VmState
from drainer.io.log import redact_text
from drainer.io.safefile import UnsafeFileError, ensure_dir
from drainer.io.safefile import open_file as safe_open

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
_EVENT_SELECT = f"SELECT {_EVENT_COLUMNS} FROM events"  # noqa: S608  # nosec B608
_EVENT_INSERT = f"INSERT OR REPLACE INTO events ({_EVENT_COLUMNS}) VALUES ({_EVENT_PLACEHOLDERS})"  # noqa: S608  # nosec B608


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


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _need_dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


class StateStore:
    """The SQLite state database. Raises StateError when it cannot be opened or is not ours."""

    def __init__(self, state_dir: str | os.PathLike[str], *, dry_run: bool = False) -> None:
        """Open (or create) the database. ``dry_run``: work on an in-memory copy, so nothing at all
        is written to the state directory (not even a new, empty database).

        ``fresh`` tells whether the database was created (or was empty) just now: the local state was
        missing, and the caller reconciles with Azure. Raises StateError.
        """
        self.dir = Path(state_dir)
        self.path = self.dir / DB_NAME
        self.fresh = False
        self._cacheable = not dry_run
        try:
            if dry_run:
                self._db = _memory_copy(self.path)
            else:
                _private_files(self.dir, self.path)
                # Shared with the threads that write a VM's NICs at once (drainer.act.fanout), which
                # serialise every call through one lock.
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=10, check_same_thread=False
                )
                # WAL + FULL: a committed run survives power loss, not only a process crash.
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
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
            raise StateError(f"{self.path}: cannot open the state database: {exc}") from exc
        except UnsafeFileError as exc:
            raise StateRefusedError(f"{self.dir}: state dir: {exc}") from exc
        except OSError as exc:
            raise StateRefusedError(f"{self.dir}: cannot create the state directory: {exc}") from exc

    def close(self) -> None:
        self._db.close()

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

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def load(self, scope: str = "all", *, recent: int = 50) -> State:
        """The persisted state. ``scope``: "all" events; "open" (the hot path: events not cleared, and
        those the VM's drain state still names); "recent" (``status``: the open ones and the ``recent``
        most recently cleared). Raises StateError on rows this version cannot read.

        "open" in a long-lived process (the daemon) reuses the state it saved or loaded last, as long
        as no save happened since (the ``generation`` token in ``meta`` is unchanged): with a thousand
        events of other VMs listed, reading them back every second would be most of the daemon's CPU."""
        if scope == "open" and self._cacheable:
            cached = _CACHE.get(str(self.path))
            try:
                generation = self.meta(GENERATION)
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: unreadable state: {exc}") from exc
            if cached is not None and generation is not None and cached[0] == generation:
                return cached[1]
            state = self.load("all-open")
            if generation is not None:
                _CACHE[str(self.path)] = (generation, state)
            return state
        try:
            row = self._db.execute(
                "SELECT drain_state, since, held_by, attempts, last_error, held, manual, last_attempt_at,"
                " last_reconcile_at, last_reconcile FROM vm WHERE id = 1"
            ).fetchone()
            events = self._events(scope, recent, json.loads(row[2]) if row is not None else [])
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path}: unreadable state: {exc}") from exc
        vm = VmState()
        if row is not None:
            try:
                vm = VmState(
                    drain_state=DrainState(row[0]),
                    since=_dt(row[1]),
                    held_by=tuple(json.loads(row[2])),
                    attempts=int(row[3]),
                    last_error=str(row[4]),
                    held=str(row[5]),
                    manual=bool(row[6]),
                    last_attempt_at=_dt(row[7]),
                    last_reconcile_at=_dt(row[8]),
                    last_reconcile=str(row[9]),
                )
            except (ValueError, TypeError) as exc:
                raise StateError(f"{self.path}: unreadable VM state: {exc}") from exc
        incarnation = self.meta("incarnation")
        return State(
            events=events,
            vm=vm,
            incarnation=None if incarnation is None else int(incarnation),
            boot_id=self.meta("boot_id"),
        )

    def _events(self, scope: str, recent: int, held_by: list[str]) -> dict[str, EventRecord]:
        # "all-open": what "open" reads from the database (without the cache).
        if scope == "all":
            rows = self._db.execute(_EVENT_SELECT).fetchall()
        else:
            # Through the (state, cleared_at) index: the cost does not grow with the cleared ones.
            rows = self._db.execute(_EVENT_SELECT + f" WHERE state IN ({_OPEN_STATES})").fetchall()
            if scope == "recent":
                rows += self._db.execute(
                    _EVENT_SELECT + " WHERE state = 'cleared' ORDER BY cleared_at DESC LIMIT ?", (recent,)
                ).fetchall()
        events = {row[0]: _record_from_row(row) for row in rows}
        events.update(self.records([str(k) for k in held_by if k not in events]))
        return events

    def records(self, keys: Sequence[str]) -> dict[str, EventRecord]:
        """The stored records of these event keys (cleared ones included), looked up by key."""
        found: dict[str, EventRecord] = {}
        for key in keys:
            row = self._db.execute(_EVENT_SELECT + " WHERE key = ?", (key,)).fetchone()
            if row is not None:
                found[row[0]] = _record_from_row(row)
        return found

    def holds_anything(self) -> bool:
        """Whether the database holds any event, drain state or record (else it is as good as new)."""
        for query in (
            "SELECT 1 FROM events LIMIT 1",
            "SELECT 1 FROM ledger LIMIT 1",
            "SELECT 1 FROM vm LIMIT 1",
        ):
            if self._db.execute(query).fetchone():
                return True
        return False

    def history(self, *, event_id: str | None = None, limit: int = 200) -> list[HistoryEntry]:
        """The newest ``limit`` transitions, oldest first (optionally for one event)."""
        query = "SELECT seq, at, subject, event_id, event_type, from_state, to_state, reason FROM "
        query += "history"
        params: list[Any] = []
        if event_id:
            query += " WHERE lower(event_id) = lower(?)"
            params.append(event_id)
        query += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        rows = self._db.execute(query, params).fetchall()
        return [
            HistoryEntry(
                seq=r[0],
                at=_need_dt(r[1]),
                transition=Transition(
                    subject=r[2],
                    event_id=r[3],
                    event_type=r[4],
                    from_state=r[5],
                    to_state=r[6],
                    reason=r[7],
                ),
            )
            for r in reversed(rows)
        ]

    # -- writing ---------------------------------------------------------------------------------

    def save(
        self,
        old: State,
        new: State,
        transitions: Sequence[Transition],
        now: datetime,
        *,
        meta: dict[str, str] | None = None,
        retention: Retention | None = None,
    ) -> None:
        """Persist ``new`` (written as a diff against ``old``) and append ``transitions``, atomically.
        ``retention``: prune old history and cleared events in the same transaction."""
        try:
            with self._transaction() as db:
                for key, record in new.events.items():
                    if old.events.get(key) != record:
                        db.execute(
                            _EVENT_INSERT,
                            _record_to_row(key, record),
                        )
                for key in old.events.keys() - new.events.keys():
                    db.execute("DELETE FROM events WHERE key = ?", (key,))
                if new.vm != old.vm:
                    vm = new.vm
                    db.execute(
                        "INSERT OR REPLACE INTO vm (id, drain_state, since, held_by, attempts, last_error,"
                        " held, manual, last_attempt_at, last_reconcile_at, last_reconcile)"
                        " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            vm.drain_state.value,
                            _ts(vm.since),
                            json.dumps(list(vm.held_by)),
                            vm.attempts,
                            redact_text(vm.last_error),  # ARM errors can echo a token
                            redact_text(vm.held),
                            int(vm.manual),
                            _ts(vm.last_attempt_at),
                            _ts(vm.last_reconcile_at),
                            redact_text(vm.last_reconcile),
                        ),
                    )
                values = dict(meta or {})
                # A new token per save: a process that loaded the state at this token may reuse it.
                values[GENERATION] = uuid.uuid4().hex
                if new.incarnation is not None and new.incarnation != old.incarnation:
                    values["incarnation"] = str(new.incarnation)
                if new.boot_id is not None and new.boot_id != old.boot_id:
                    values["boot_id"] = new.boot_id
                for key, value in values.items():
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                stamp = _ts(now)
                db.executemany(
                    "INSERT INTO history (at, subject, event_id, event_type, from_state, to_state,"
                    " reason) VALUES (?,?,?,?,?,?,?)",
                    [
                        (
                            stamp,
                            t.subject,
                            t.event_id,
                            t.event_type,
                            t.from_state,
                            t.to_state,
                            redact_text(t.reason),
                        )
                        for t in transitions
                    ],
                )
                if retention is not None:
                    _prune(db, retention, now, keep=new.vm.held_by)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc
        if self._cacheable:
            _CACHE[str(self.path)] = (values[GENERATION], _open_part(new))

    # -- the ledger of changes to undo --------------------------------------------------------

    def ledger(self, method: str | None = None) -> list[LedgerEntry]:
        """Recorded changes (all, or one method's), oldest first."""
        query = "SELECT method, resource_id, item, kind, target, status FROM ledger"
        params: tuple[str, ...] = ()
        if method is not None:
            query += " WHERE method = ?"
            params = (method,)
        rows = self._db.execute(query + " ORDER BY recorded_at, rowid", params).fetchall()
        return [LedgerEntry(*row) for row in rows]

    def ledger_record(self, entries: Sequence[LedgerEntry], now: datetime) -> None:
        """Record (or update the status of) entries, atomically. Raises StateError."""
        stamp = _ts(now)
        try:
            with self._transaction() as db:
                for e in entries:
                    db.execute(
                        "INSERT INTO ledger VALUES (?,?,?,?,?,?,?) ON CONFLICT "
                        "(method, resource_id, item, kind, target) DO UPDATE SET status = excluded.status",
                        (*e.key, e.status, stamp),
                    )
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc

    def ledger_forget(self, entries: Sequence[LedgerEntry]) -> None:
        """Drop entries once their change is undone, atomically. Raises StateError."""
        try:
            with self._transaction() as db:
                for e in entries:
                    db.execute(
                        "DELETE FROM ledger WHERE method = ? AND resource_id = ? AND item = ? AND kind = ?"
                        " AND target = ?",
                        e.key,
                    )
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc

    # -- resources seen absent (404), until confirmed gone -------------------------------------

    def note_absent(self, resource_id: str, now: datetime) -> tuple[datetime, int]:
        """Count one 404 of ``resource_id``: (first seen absent, reads so far). Raises StateError."""
        key = resource_id.lower()
        try:
            with self._transaction() as db:
                row = db.execute(
                    "SELECT first_at, reads FROM absent WHERE resource_id = ?", (key,)
                ).fetchone()
                first, reads = (now, 0) if row is None else (_need_dt(row[0]), int(row[1]))
                first = min(first, now)
                db.execute("INSERT OR REPLACE INTO absent VALUES (?, ?, ?)", (key, _ts(first), reads + 1))
        except (sqlite3.Error, ValueError) as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc
        return first, reads + 1

    def forget_absent(self, resource_id: str) -> None:
        try:
            self._db.execute("DELETE FROM absent WHERE resource_id = ?", (resource_id.lower(),))
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc

    def clear_absent(self) -> None:
        try:
            self._db.execute("DELETE FROM absent")
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc

    def absent(self) -> dict[str, tuple[datetime, int]]:
        """Resources seen absent and not yet confirmed gone (for ``status``)."""
        rows = self._db.execute("SELECT resource_id, first_at, reads FROM absent").fetchall()
        return {r[0]: (_need_dt(r[1]), int(r[2])) for r in rows}

    def set_meta(self, values: dict[str, str]) -> None:
        """Write meta keys in one transaction. Raises StateError."""
        try:
            with self._transaction() as db:
                for key, value in values.items():
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc


GENERATION = "generation"
# state.db path -> (generation token, its open state): see StateStore.load.
_CACHE: dict[str, tuple[str, State]] = {}


def _open_part(state: State) -> State:
    """The state as ``load("open")`` would read it back: open events and those the VM names."""
    keep = set(state.vm.held_by)
    events = {k: r for k, r in state.events.items() if r.state is not EventState.CLEARED or k in keep}
    return state if len(events) == len(state.events) else state._replace(events=events)


class Retention(NamedTuple):
    """How much the database keeps (``[retention]`` and ``[policy] retention_days``)."""

    cleared_days: int = 30
    cleared_events: int = 1000
    history_days: int = 365
    history_rows: int = 20000


def _prune(db: sqlite3.Connection, keep_what: Retention, now: datetime, *, keep: Sequence[str]) -> None:
    """Delete cleared events and history beyond the retention (age and count); never an event the VM's
    drain state still names (``keep``)."""
    spare = json.dumps(list(keep))
    cleared_before = _ts(now - timedelta(days=keep_what.cleared_days))
    db.execute(
        "DELETE FROM events WHERE state = 'cleared' AND key NOT IN (SELECT value FROM json_each(?))"
        " AND (cleared_at < ? OR key NOT IN (SELECT key FROM events WHERE state = 'cleared'"
        " ORDER BY cleared_at DESC LIMIT ?))",
        (spare, cleared_before, keep_what.cleared_events),
    )
    db.execute("DELETE FROM history WHERE at < ?", (_ts(now - timedelta(days=keep_what.history_days)),))
    db.execute(
        "DELETE FROM history WHERE seq <= (SELECT MAX(seq) FROM history) - ?", (keep_what.history_rows,)
    )


class StateRefusedError(StateError):
    """The state cannot be used as it is and must not be rebuilt (a planted symlink, a directory
    others can write to, a database of a newer drainer): the run stops, saying why."""


class NewerSchemaError(StateRefusedError):
    """The database was written by a newer drainer: never moved aside or rebuilt."""


def _memory_copy(path: Path) -> sqlite3.Connection:
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


def open_store(state_dir: str | os.PathLike[str], *, dry_run: bool = False) -> tuple[StateStore, State, str]:
    """Open the state and load it (its open events: cleared ones are looked up by key when needed); a
    database that cannot be read is moved aside and rebuilt.

    Returns (store, state, note): ``note`` says what was moved aside, if anything (then the store is
    ``fresh``). Raises StateError when the directory itself is unusable or the database was written
    by a newer version.
    """
    note = ""
    for attempt in range(2):
        try:
            store = StateStore(state_dir, dry_run=dry_run)
        except StateRefusedError:
            raise
        except StateError as exc:
            if attempt or not (Path(state_dir) / DB_NAME).exists() or dry_run:
                raise
            note = _unreadable(Path(state_dir), str(exc))
            continue
        try:
            return store, store.load("open"), note
        except StateError as exc:
            store.close()
            if attempt or dry_run:
                raise
            note = _unreadable(Path(state_dir), str(exc))
    raise StateError(f"{state_dir}: cannot open the state database")  # pragma: no cover - loop returns


def _unreadable(state_dir: Path, reason: str) -> str:
    target = set_aside(state_dir, "corrupt")
    return f"the state database was unreadable ({reason}); moved aside to {target} and rebuilt"


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


def _record_to_row(key: str, record: EventRecord) -> tuple[Any, ...]:
    e = record.event
    return (
        key,
        e.event_id,
        e.event_type.value,
        e.status.value,
        _ts(e.not_before),
        e.duration_seconds,
        json.dumps(list(e.resources)),
        e.resource_type,
        e.source,
        e.description,
        record.state.value,
        redact_text(record.reason),
        _ts(record.first_seen),
        _ts(record.last_seen),
        _ts(record.updated_at),
        _ts(record.started_at),
        _ts(record.cleared_at),
        _ts(record.left_rotation_at),
        _ts(record.approved_at),
        _ts(record.returned_at),
        record.approval,
        record.drain_boot,
        record.started_mono,
        record.started_boot,
        record.gate_since,
        record.impacts,
    )


def _record_from_row(row: Sequence[Any]) -> EventRecord:
    event = ScheduledEvent(
        event_id=row[1],
        event_type=EventType(row[2]),
        status=EventStatus(row[3]),
        not_before=_dt(row[4]),
        duration_seconds=row[5],
        resources=tuple(json.loads(row[6])),
        resource_type=row[7],
        source=row[8],
        description=row[9],
    )
    return EventRecord(
        event=event,
        state=EventState(row[10]),
        reason=row[11],
        first_seen=_need_dt(row[12]),
        last_seen=_need_dt(row[13]),
        updated_at=_need_dt(row[14]),
        started_at=_dt(row[15]),
        cleared_at=_dt(row[16]),
        left_rotation_at=_dt(row[17]),
        approved_at=_dt(row[18]),
        returned_at=_dt(row[19]),
        approval=row[20],
        drain_boot=row[21],
        started_mono=row[22],
        started_boot=row[23],
        gate_since=row[24],
        impacts=int(row[25]),
    )


def _private_files(directory: Path, db: Path) -> None:
    """A state dir no other user can write to; the database and its WAL files mode 0600 and never
    symlinks (SQLite itself would follow one). Raises UnsafeFileError, OSError."""
    ensure_dir(directory)
    os.close(safe_open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("-wal", "-shm", "-journal"):
        side = db.with_name(db.name + suffix)
        if side.is_symlink() or side.exists():
            os.close(safe_open(side, os.O_RDWR, 0o600))
