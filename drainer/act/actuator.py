"""The seam between the runner and the drain methods: what an action is given, and what a drain
method implements. Imported by the runner and by every drain method (no method imports another)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple, Protocol

from drainer.act.records import RecordGuard, memory_guard
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.core import Drain, EventRecord, Restore
from drainer.store.ledger import (
    Absence,
    IntentsSeen,
    Ledger,
    MemoryAbsence,
    MemoryIntentsSeen,
    MemoryNicIds,
    NicIds,
)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Admission(NamedTuple):
    """A drain granted by the fleet's floor (``Actuator.admit``): which pools (lower-case ids), when
    the announcement started (``time.monotonic``), and how to take it back if the drain does not go
    ahead (a pre-drain hook aborts it)."""

    pools: frozenset[str]
    at: float
    withdraw: Callable[[], None]
    nics: tuple[str, ...] = ()  # the VM's NICs as found for it: the drain that follows uses them


def _no_delay(_: float) -> None:
    return None


@dataclass(frozen=True)
class ActionContext:
    config: Config
    vm: InstanceInfo
    events: tuple[EventRecord, ...]  # the events the action is for (empty for a restore)
    log: Logger
    # Local records: for a NIC whose tags cannot hold drainer's record, and a cache for `status`.
    ledger: Ledger
    # Which resources answered 404, since when: a resource is dropped only once confirmed gone.
    absence: Absence = field(default_factory=MemoryAbsence)
    # Crash-injection seam between the steps of an action (see drainer.app.runner.Seams).
    checkpoint: Callable[[str], None] = lambda _: None
    now: Callable[[], datetime] = _utcnow
    # Why the platform forces taking the VM out now ("" when it does not), for a reconcile (a drain
    # carries its own): the floor then does not hold it.
    forced: str = ""
    # Lines for `status` the action leaves behind (e.g. a pool below its floor after the drain).
    notes: list[str] = field(default_factory=list)
    # Checks the records read from NICs and signs those written (drainer.act.records).
    records: RecordGuard = field(default_factory=memory_guard)
    # This VM's NIC ids as read from its VM resource, kept for the boot (``lb_common.discover_nics``).
    nic_ids: NicIds = field(default_factory=MemoryNicIds)
    # When this VM first saw each other VM's intent (the fleet's floor, drainer.decide.intents).
    seen: IntentsSeen = field(default_factory=MemoryIntentsSeen)
    # Sleeps a random time of up to the given seconds (the effects seam's spread): the floor's retry
    # after other VMs announced leaving the same pools at the same moment.
    spread: Callable[[float], None] = _no_delay
    # The grants of the floor made for this action (``Actuator.admit``), used by its drain.
    admitted: list[Admission] = field(default_factory=list)


class Actuator(Protocol):
    """A drain method. Every call is idempotent and raises ActionError on failure.

    ``admit`` asks the fleet's floor for this drain before anything else happens (the pre-drain
    hooks run only once it is granted): it raises DrainHeldError to hold it; ``drain`` uses its
    grant (or asks itself when called alone).

    ``reconcile`` converges what is (in Azure, or on this VM) with what should be (``out``: the VM
    out of rotation) whatever the local state says, and returns (whether it changed anything, one
    line saying what it found).
    """

    name: str

    def admit(self, action: Drain, ctx: ActionContext) -> None: ...

    def drain(self, action: Drain, ctx: ActionContext) -> None: ...

    def restore(self, action: Restore, ctx: ActionContext) -> None: ...

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]: ...
