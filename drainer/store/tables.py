"""The state database's append-only and bookkeeping tables: the history, the ledger of changes to
undo, and the resources seen absent."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from drainer.base.errors import StateError
from drainer.decide.model import Transition
from drainer.io.log import redact_text
from drainer.store.db import Database
from drainer.store.schema import HistoryEntry, LedgerEntry, db_error, need_dt, ts


class Tables(Database):
    """History, ledger and absence, on the state database."""

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
        with self._reading():
            rows = self._db.execute(query, params).fetchall()
        try:
            return self._history(rows)
        except (ValueError, KeyError, TypeError) as exc:
            raise db_error(self.path, "unreadable history", exc) from exc

    @staticmethod
    def _history(rows: list[sqlite3.Row]) -> list[HistoryEntry]:
        return [
            HistoryEntry(
                seq=r["seq"],
                at=need_dt(r["at"]),
                transition=Transition(
                    subject=r["subject"],
                    event_id=r["event_id"],
                    event_type=r["event_type"],
                    from_state=r["from_state"],
                    to_state=r["to_state"],
                    reason=r["reason"],
                ),
            )
            for r in reversed(rows)
        ]

    # -- writing ---------------------------------------------------------------------------------

    def append_history(self, now: datetime, transitions: Sequence[Transition]) -> None:
        """Add lines of history that change no state (a hook run), in one transaction. Raises StateError."""
        try:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO history (at, subject, event_id, event_type, from_state, to_state,"
                    " reason) VALUES (?,?,?,?,?,?,?)",
                    [
                        (
                            ts(now),
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
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from exc

    # -- the ledger of changes to undo --------------------------------------------------------

    def ledger(self, method: str | None = None) -> list[LedgerEntry]:
        """Recorded changes (all, or one method's), oldest first."""
        query = "SELECT method, resource_id, item, kind, target, status FROM ledger"
        params: tuple[str, ...] = ()
        if method is not None:
            query += " WHERE method = ?"
            params = (method,)
        with self._reading():
            rows = self._db.execute(query + " ORDER BY recorded_at, rowid", params).fetchall()
        return [
            LedgerEntry(
                method=r["method"],
                resource_id=r["resource_id"],
                item=r["item"],
                kind=r["kind"],
                target=r["target"],
                status=r["status"],
            )
            for r in rows
        ]

    def ledger_record(self, entries: Sequence[LedgerEntry], now: datetime) -> None:
        """Record (or update the status of) entries, atomically. Raises StateError."""
        stamp = ts(now)
        try:
            with self._transaction() as db:
                for e in entries:
                    db.execute(
                        "INSERT INTO ledger VALUES (?,?,?,?,?,?,?) ON CONFLICT "
                        "(method, resource_id, item, kind, target) DO UPDATE SET status = excluded.status",
                        (*e.key, e.status, stamp),
                    )
        except sqlite3.Error as exc:
            raise db_error(self.path, "cannot save the state", exc) from exc

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
            raise db_error(self.path, "cannot save the state", exc) from exc

    # -- resources seen absent (404), until confirmed gone -------------------------------------

    def note_absent(self, resource_id: str, now: datetime) -> tuple[datetime, int]:
        """Count one 404 of ``resource_id``: (first seen absent, reads so far). Raises StateError."""
        key = resource_id.lower()
        try:
            with self._transaction() as db:
                row = db.execute(
                    "SELECT first_at, reads FROM absent WHERE resource_id = ?", (key,)
                ).fetchone()
                first, reads = (now, 0) if row is None else (need_dt(row["first_at"]), int(row["reads"]))
                first = min(first, now)
                db.execute("INSERT OR REPLACE INTO absent VALUES (?, ?, ?)", (key, ts(first), reads + 1))
        except (sqlite3.Error, ValueError) as exc:
            raise db_error(self.path, "cannot save the state", exc) from exc
        return first, reads + 1

    def forget_absent(self, resource_id: str) -> None:
        try:
            self._db.execute("DELETE FROM absent WHERE resource_id = ?", (resource_id.lower(),))
        except sqlite3.Error as exc:
            raise db_error(self.path, "cannot save the state", exc) from exc

    def clear_absent(self) -> None:
        try:
            self._db.execute("DELETE FROM absent")
        except sqlite3.Error as exc:
            raise db_error(self.path, "cannot save the state", exc) from exc

    def absent(self) -> dict[str, tuple[datetime, int]]:
        """Resources seen absent and not yet confirmed gone (for ``status``)."""
        with self._reading():
            rows = self._db.execute("SELECT resource_id, first_at, reads FROM absent").fetchall()
        try:
            return {r["resource_id"]: (need_dt(r["first_at"]), int(r["reads"])) for r in rows}
        except (ValueError, KeyError, TypeError) as exc:
            raise db_error(self.path, "unreadable state", exc) from exc
