"""The persisted state: one SQLite database in the state directory.

Tables: ``events`` (one row per EventId, updated in place as its status changes), ``vm`` (the drain
state of this VM), ``history`` (append-only transitions) and ``meta`` (schema version, incarnation,
boot id, cached VM identity, last successful check). Every save is one transaction, so a run killed at
any point leaves either the old or the new state, never a mix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from drainer.base.errors import MalformedDocumentError, StateError
from drainer.base.instance import InstanceInfo
from drainer.decide.model import DrainState, EventRecord, EventState, State, Transition, VmState
from drainer.io.log import redact_text
from drainer.store.files import set_aside
from drainer.store.schema import (
    _EVENT_INSERT,
    _EVENT_SELECT,
    _OPEN_STATES,
    DB_NAME,
    HistoryEntry,
    LedgerEntry,
    NewerSchemaError,
    Retention,
    StateCorruptError,
    StateRefusedError,
    db_error,
    dt,
    record_from_row,
    record_to_row,
    ts,
)
from drainer.store.tables import Tables

__all__ = [
    "DB_NAME",
    "HistoryEntry",
    "LedgerEntry",
    "NewerSchemaError",
    "Retention",
    "StateCorruptError",
    "StateRefusedError",
    "StateStore",
    "open_store",
    "set_aside",
]

# The values kept in the ``meta`` table, each behind a typed accessor below.
_IDENTITY = "vm"
_BOOT_ID = "boot_id"
_INCARNATION = "incarnation"
_PENDING_PHASES = "pending_phases"
_FLOOR_BREACH = "floor_breach"
_PEER_CHECK = "peer_check"
_LISTED_NICS = "listed_nics"
_RECORD_PROBLEMS = "record_problems"
_OWN_NICS = "own_nics"
_INTENTS_SEEN = "intents_seen"


class StateStore(Tables):
    """The SQLite state database: the state of events and of this VM, and a typed accessor for every
    other value it keeps (no SQL or JSON of it outside drainer.store). Raises StateError when it
    cannot be opened or is not ours."""

    def identity(self) -> InstanceInfo | None:
        """The VM identity this state was last verified for (None: none, or unreadable)."""
        data = self._meta_json(_IDENTITY, dict)
        if data is None:
            return None
        try:
            return InstanceInfo.from_json(data, source=str(self.path))
        except MalformedDocumentError:
            return None

    def set_identity(self, info: InstanceInfo) -> None:
        """Raises StateError."""
        self._set_meta({_IDENTITY: json.dumps(info.to_json())})

    def boot_id(self) -> str | None:
        """The boot id of the last saved run."""
        return self._meta(_BOOT_ID)

    def pending_phases(self) -> list[dict[str, Any]]:
        """Hook phases that failed and are run again on later runs (``drainer.act.hooks``)."""
        return [p for p in self._meta_json(_PENDING_PHASES, list) or [] if isinstance(p, dict)]

    def set_pending_phases(self, pending: Sequence[dict[str, Any]]) -> None:
        """Raises StateError."""
        self._set_meta({_PENDING_PHASES: json.dumps(list(pending))})

    def floor_breach(self) -> dict[str, Any] | None:
        """The last drain forced below a pool's floor (for ``status``)."""
        found: dict[str, Any] | None = self._meta_json(_FLOOR_BREACH, dict)
        return found

    def set_floor_breach(self, now: datetime, what: Sequence[str]) -> None:
        """Raises StateError."""
        self._set_meta({_FLOOR_BREACH: json.dumps({"at": now.isoformat(), "what": list(what)})})

    def record_problems(self) -> list[dict[str, Any]]:
        """What the last action that read the NICs' records found wrong with them (for ``status``):
        records that do not verify, and records that disagree with the local copy."""
        return [p for p in self._meta_json(_RECORD_PROBLEMS, list) or [] if isinstance(p, dict)]

    def set_record_problems(self, now: datetime, problems: Sequence[dict[str, Any]]) -> None:
        """Replace them (nothing is written when they are the same; a problem seen before keeps the
        time it was first seen). Raises StateError."""
        before = {_problem_key(p): p for p in self.record_problems()}
        after = []
        for problem in problems:
            clean = {k: _redacted(v) for k, v in problem.items() if k != "since"}
            known = before.get(_problem_key(clean))
            clean["since"] = known["since"] if known and "since" in known else now.isoformat()
            after.append(clean)
        if [_problem_key(p) for p in after] != list(before):
            self._set_meta({_RECORD_PROBLEMS: json.dumps(after)})

    def intents_seen(self) -> dict[str, float]:
        """When this VM first saw each other VM's intent (``drainer.decide.intents.remember``)."""
        found: dict[str, Any] = self._meta_json(_INTENTS_SEEN, dict) or {}
        return {str(k): float(v) for k, v in found.items() if type(v) in (int, float)}

    def set_intents_seen(self, seen: Mapping[str, float]) -> None:
        """Raises StateError."""
        self._set_meta({_INTENTS_SEEN: json.dumps(dict(sorted(seen.items())))})

    def peer_check(self) -> dict[str, Any]:
        """Early approval's last read of the listed VMs' pools (``drainer.act.approve``)."""
        found: dict[str, Any] = self._meta_json(_PEER_CHECK, dict) or {}
        return found

    def listed_nics(self) -> dict[str, Any]:
        """The listed VMs' NICs, as found for one set of listed VMs (``drainer.act.approve``)."""
        found: dict[str, Any] = self._meta_json(_LISTED_NICS, dict) or {}
        return found

    def set_peer_check(self, *, listed_nics: dict[str, Any], peer_check: dict[str, Any]) -> None:
        """Raises StateError."""
        self._set_meta({_LISTED_NICS: json.dumps(listed_nics), _PEER_CHECK: json.dumps(peer_check)})

    def own_nics(self, resource_id: str) -> list[str] | None:
        """This VM's NIC ids as its VM resource listed them during this boot (None: not read during
        this boot, or the boot is unknown). A NIC is attached to or detached from a VM only while it is
        stopped (deallocated), so the list holds until the next boot."""
        found = self._meta_json(_OWN_NICS, dict)
        boot = self.boot_id()
        if found is None or boot is None or found.get("boot_id") != boot or found.get("vm") != resource_id:
            return None
        nics = found.get("nics")
        return [str(n) for n in nics] if isinstance(nics, list) else None

    def set_own_nics(self, resource_id: str, nics: Sequence[str]) -> None:
        """Raises StateError."""
        boot = self.boot_id()
        if boot is not None:
            self._set_meta({_OWN_NICS: json.dumps({"boot_id": boot, "vm": resource_id, "nics": list(nics)})})

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
                generation = self._meta(GENERATION)
            except sqlite3.Error as exc:
                raise db_error(self.path, "unreadable state", exc) from exc
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
            events = self._events(scope, recent, json.loads(row["held_by"]) if row is not None else [])
        except (sqlite3.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise db_error(self.path, "unreadable state", exc) from exc
        vm = VmState()
        if row is not None:
            try:
                vm = VmState(
                    drain_state=DrainState(row["drain_state"]),
                    since=dt(row["since"]),
                    held_by=tuple(json.loads(row["held_by"])),
                    attempts=int(row["attempts"]),
                    last_error=str(row["last_error"]),
                    held=str(row["held"]),
                    manual=bool(row["manual"]),
                    last_attempt_at=dt(row["last_attempt_at"]),
                    last_reconcile_at=dt(row["last_reconcile_at"]),
                    last_reconcile=str(row["last_reconcile"]),
                )
            except (ValueError, TypeError, RecursionError) as exc:
                raise db_error(self.path, "unreadable VM state", exc) from exc
        incarnation = self._meta(_INCARNATION)
        return State(
            events=events,
            vm=vm,
            incarnation=_incarnation(self.path, incarnation),
            boot_id=self._meta(_BOOT_ID),
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
        events = {row["key"]: record_from_row(row) for row in rows}
        events.update(self.records([str(k) for k in held_by if k not in events]))
        return events

    def records(self, keys: Sequence[str]) -> dict[str, EventRecord]:
        """The stored records of these event keys (cleared ones included), looked up by key."""
        found: dict[str, EventRecord] = {}
        for key in keys:
            with self._reading():
                row = self._db.execute(_EVENT_SELECT + " WHERE key = ?", (key,)).fetchone()
            if row is not None:
                try:
                    found[row["key"]] = record_from_row(row)
                except (ValueError, KeyError, TypeError, RecursionError) as exc:
                    raise db_error(self.path, "unreadable event", exc) from exc
        return found

    def holds_anything(self) -> bool:
        """Whether the database holds any event, drain state or record (else it is as good as new)."""
        for query in (
            "SELECT 1 FROM events LIMIT 1",
            "SELECT 1 FROM ledger LIMIT 1",
            "SELECT 1 FROM vm LIMIT 1",
        ):
            with self._reading():
                if self._db.execute(query).fetchone():
                    return True
        return False

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
                            record_to_row(key, record),
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
                            ts(vm.since),
                            json.dumps(list(vm.held_by)),
                            vm.attempts,
                            redact_text(vm.last_error),  # ARM errors can echo a token
                            redact_text(vm.held),
                            int(vm.manual),
                            ts(vm.last_attempt_at),
                            ts(vm.last_reconcile_at),
                            redact_text(vm.last_reconcile),
                        ),
                    )
                values = dict(meta or {})
                # A new token per save: a process that loaded the state at this token may reuse it.
                values[GENERATION] = uuid.uuid4().hex
                if new.incarnation is not None and new.incarnation != old.incarnation:
                    values[_INCARNATION] = str(new.incarnation)
                if new.boot_id is not None and new.boot_id != old.boot_id:
                    values[_BOOT_ID] = new.boot_id
                for key, value in values.items():
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                stamp = ts(now)
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
            raise db_error(self.path, "cannot save the state", exc) from exc
        if self._cacheable:
            _CACHE[str(self.path)] = (values[GENERATION], _open_part(new))


def _incarnation(path: Path, text: str | None) -> int | None:
    """The stored DocumentIncarnation. Raises StateCorruptError (a damaged value: set aside, rebuilt)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise db_error(path, "unreadable state", exc) from exc


def _problem_key(problem: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in problem.items() if k != "since"}, sort_keys=True)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


GENERATION = "generation"
# state.db path -> (generation token, its open state): see StateStore.load.
_CACHE: dict[str, tuple[str, State]] = {}


def _open_part(state: State) -> State:
    """The state as ``load("open")`` would read it back: open events and those the VM names."""
    keep = set(state.vm.held_by)
    events = {k: r for k, r in state.events.items() if r.state is not EventState.CLEARED or k in keep}
    return state if len(events) == len(state.events) else state._replace(events=events)


def _prune(db: sqlite3.Connection, keep_what: Retention, now: datetime, *, keep: Sequence[str]) -> None:
    """Delete cleared events and history beyond the retention (age and count); never an event the VM's
    drain state still names (``keep``)."""
    spare = json.dumps(list(keep))
    cleared_before = ts(now - timedelta(days=keep_what.cleared_days))
    db.execute(
        "DELETE FROM events WHERE state = 'cleared' AND key NOT IN (SELECT value FROM json_each(?))"
        " AND (cleared_at < ? OR key NOT IN (SELECT key FROM events WHERE state = 'cleared'"
        " ORDER BY cleared_at DESC LIMIT ?))",
        (spare, cleared_before, keep_what.cleared_events),
    )
    db.execute("DELETE FROM history WHERE at < ?", (ts(now - timedelta(days=keep_what.history_days)),))
    db.execute(
        "DELETE FROM history WHERE seq <= (SELECT MAX(seq) FROM history) - ?", (keep_what.history_rows,)
    )


def open_store(
    state_dir: str | os.PathLike[str], *, in_memory: bool = False
) -> tuple[StateStore, State, str]:
    """Open the state and load it (its open events: cleared ones are looked up by key when needed); a
    database that cannot be read is moved aside and rebuilt.

    Returns (store, state, note): ``note`` says what was moved aside, if anything (then the store is
    ``fresh``). Raises StateError when the directory itself is unusable or the database was written
    by a newer version.
    """
    note = ""
    for attempt in range(2):
        # Only a damaged database is set aside: a full disk or an I/O error leaves it as it is.
        try:
            store = StateStore(state_dir, in_memory=in_memory)
        except StateCorruptError as exc:
            if attempt or not (Path(state_dir) / DB_NAME).exists() or in_memory:
                raise
            note = _unreadable(Path(state_dir), str(exc))
            continue
        try:
            return store, store.load("open"), note
        except StateCorruptError as exc:
            store.close()
            if attempt or in_memory:
                raise
            note = _unreadable(Path(state_dir), str(exc))
    raise StateError(f"{state_dir}: cannot open the state database")  # pragma: no cover - loop returns


def _unreadable(state_dir: Path, reason: str) -> str:
    target = set_aside(state_dir, "corrupt")
    return f"the state database was unreadable ({reason}); moved aside to {target} and rebuilt"


def set_aside_damaged(store: StateStore, reason: str) -> str:
    """A database found damaged in the middle of a run: close it and move it aside (the next open
    rebuilds it, fresh, and reconciles with Azure). Returns what was done. Raises StateError."""
    store.close()
    return _unreadable(store.dir, reason)
