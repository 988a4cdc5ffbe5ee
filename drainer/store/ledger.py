"""Local records of what drain methods changed outside drainer, and of resources seen absent.

The truth about a drain lives on the NICs themselves (``drainer.decide.nicrecord``). The ledger here keeps a
local record only where the NIC cannot hold one (an Azure Policy refuses or rewrites the tags, or the
record does not fit Azure's tag limits), plus a cache of the NIC records for ``status``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from drainer.store.state import LedgerEntry, StateStore


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
        if entries:
            self._store.ledger_record(entries, self._now())

    def forget(self, entries: Sequence[LedgerEntry]) -> None:
        if entries:
            self._store.ledger_forget(entries)


class NicIds(Protocol):
    """This VM's NIC ids, kept for the boot they were read in (``StateStore.own_nics``)."""

    def get(self, resource_id: str) -> list[str] | None: ...

    def put(self, resource_id: str, nics: Sequence[str]) -> None:
        """Raises StateError."""


class StoreNicIds:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def get(self, resource_id: str) -> list[str] | None:
        return self._store.own_nics(resource_id)

    def put(self, resource_id: str, nics: Sequence[str]) -> None:
        self._store.set_own_nics(resource_id, nics)


class MemoryNicIds:
    """Kept as long as the process (tests, and code that has no state store)."""

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}

    def get(self, resource_id: str) -> list[str] | None:
        return self._ids.get(resource_id)

    def put(self, resource_id: str, nics: Sequence[str]) -> None:
        self._ids[resource_id] = list(nics)


class Absence(Protocol):
    """Resources that answered 404. One answer never proves a resource gone: it is confirmed gone
    only after ``reads`` answers spread over ``seconds`` (``[drain] gone_after_reads`` and
    ``gone_after_seconds``)."""

    def absent(self, resource_id: str, now: datetime) -> bool:
        """Note one 404; True when the resource is now confirmed gone. Raises StateError."""

    def present(self, resource_id: str) -> None:
        """The resource answered: forget its earlier 404s. Raises StateError."""

    def clear(self) -> None:
        """A restore completed: no 404 counts towards a later one. Raises StateError."""


def confirmed(first: datetime, reads: int, now: datetime, need_reads: int, need_seconds: float) -> bool:
    # A clock that stepped back makes the span negative: not confirmed (the record is kept longer).
    return reads >= need_reads and (now - first).total_seconds() >= need_seconds


class StoreAbsence:
    def __init__(self, store: StateStore, reads: int, seconds: float) -> None:
        self._store = store
        self._reads = reads
        self._seconds = seconds

    def absent(self, resource_id: str, now: datetime) -> bool:
        first, reads = self._store.note_absent(resource_id, now)
        return confirmed(first, reads, now, self._reads, self._seconds)

    def present(self, resource_id: str) -> None:
        self._store.forget_absent(resource_id)

    def clear(self) -> None:
        self._store.clear_absent()


class MemoryAbsence:
    """For one process only (tests of a single action): never confirms on a single read."""

    def __init__(self, reads: int = 3, seconds: float = 300.0) -> None:
        self._seen: dict[str, tuple[datetime, int]] = {}
        self._reads = reads
        self._seconds = seconds

    def absent(self, resource_id: str, now: datetime) -> bool:
        first, reads = self._seen.get(resource_id.lower(), (now, 0))
        first = min(first, now)
        self._seen[resource_id.lower()] = (first, reads + 1)
        return confirmed(first, reads + 1, now, self._reads, self._seconds)

    def present(self, resource_id: str) -> None:
        self._seen.pop(resource_id.lower(), None)

    def clear(self) -> None:
        self._seen.clear()


class IntentsSeen(Protocol):
    """When this VM first saw each other VM's intent (``drainer.decide.intents``): an intent counts
    at most ``[fleet] claim_seconds`` from then, whatever expiry it states."""

    def load(self) -> dict[str, float]: ...

    def save(self, seen: Mapping[str, float]) -> None:
        """Raises StateError."""


class StoreIntentsSeen:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def load(self) -> dict[str, float]:
        return self._store.intents_seen()

    def save(self, seen: Mapping[str, float]) -> None:
        if seen != self._store.intents_seen():
            self._store.set_intents_seen(seen)


class MemoryIntentsSeen:
    """For one process only (tests of a single action)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def load(self) -> dict[str, float]:
        return dict(self._seen)

    def save(self, seen: Mapping[str, float]) -> None:
        self._seen = dict(seen)
