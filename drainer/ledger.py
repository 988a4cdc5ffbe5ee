"""Where drain methods record what they changed outside drainer, *before* changing it.

The ledger is what makes "put it back exactly as it was" possible: a restore re-adds exactly the
entries recorded here (and only those), whatever else changed meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from drainer.state import LedgerEntry, StateStore


class Ledger(Protocol):
    def entries(self, method: str) -> list[LedgerEntry]: ...

    def record(self, entries: Sequence[LedgerEntry]) -> None:
        """Record entries (or update their status). Raises StateError."""

    def forget(self, entries: Sequence[LedgerEntry]) -> None:
        """Drop entries whose change has been undone. Raises StateError."""


class StoreLedger:
    """The ledger in the state database: every call is its own committed transaction."""

    def __init__(self, store: StateStore, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    def entries(self, method: str) -> list[LedgerEntry]:
        return self._store.ledger(method)

    def record(self, entries: Sequence[LedgerEntry]) -> None:
        self._store.ledger_record(entries, self._now())

    def forget(self, entries: Sequence[LedgerEntry]) -> None:
        self._store.ledger_forget(entries)


class MemoryLedger:
    """A ledger that lives only as long as the process: for dry runs, which persist nothing."""

    def __init__(self, initial: Sequence[LedgerEntry] = ()) -> None:
        self._entries: dict[tuple[str, str, str, str, str], LedgerEntry] = {e.key: e for e in initial}

    def entries(self, method: str) -> list[LedgerEntry]:
        return [e for e in self._entries.values() if e.method == method]

    def record(self, entries: Sequence[LedgerEntry]) -> None:
        for entry in entries:
            self._entries[entry.key] = entry

    def forget(self, entries: Sequence[LedgerEntry]) -> None:
        for entry in entries:
            self._entries.pop(entry.key, None)
