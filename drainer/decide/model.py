"""The decision core's vocabulary: event and VM states, the state itself, what is observed, the
actions decided and the decision (see ``drainer.decide.core``).

Event states (``EventState``):
- ``other-vm``: the event does not list this VM; recorded, never acted on.
- ``ignored``:  it lists this VM but the policy says it is not worth a drain (e.g. a 5 s Freeze).
- ``pending``:  it will be acted on when NotBefore is within the configured lead time.
- ``active``:   it holds this VM out of rotation.
- ``cleared``:  it disappeared from IMDS (completed or cancelled).
- ``recovered``: still listed, but its impact is over and it no longer holds the VM
  (``restore_when = "recovered"``, see ``drainer.decide.recovery``).

VM drain states (``DrainState``): ``in_rotation`` → ``draining`` → ``drained`` → ``restoring`` →
``in_rotation``. ``draining`` and ``restoring`` are the intents, persisted before the action runs, so a
run that dies mid-way is completed by the next one.

Every type here is a NamedTuple: as typed and immutable as a frozen dataclass, and several times cheaper
to define, which matters because the every-minute idle run pays for each class at start-up.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from drainer.base.events import EventsDocument, ScheduledEvent


class EventState(str, enum.Enum):
    OTHER_VM = "other-vm"
    IGNORED = "ignored"
    PENDING = "pending"
    ACTIVE = "active"
    CLEARED = "cleared"
    # Still listed, but its impact is over and the VM is back (restore_when = "recovered").
    RECOVERED = "recovered"


class DrainState(str, enum.Enum):
    IN_ROTATION = "in_rotation"
    DRAINING = "draining"
    DRAINED = "drained"
    RESTORING = "restoring"


class EventRecord(NamedTuple):
    event: ScheduledEvent  # as last observed
    state: EventState
    reason: str
    first_seen: datetime
    last_seen: datetime  # last seen with a change (not every poll: that would be a write per poll)
    updated_at: datetime  # when ``state`` or the event's status last changed
    started_at: datetime | None = None  # first seen with EventStatus Started
    cleared_at: datetime | None = None
    # The maintenance window, as this VM lived it:
    left_rotation_at: datetime | None = None  # the drain for it completed
    approved_at: datetime | None = None  # this VM sent the approval (StartRequests)
    returned_at: datetime | None = None  # the VM was back in rotation after it
    approval: str = ""  # where the early approval stands, and why (shown by `status`)
    # restore_when = "recovered" (drainer.decide.recovery): the boot in which the event started holding the
    # VM, the monotonic clock and boot when it was first seen Started, since when (monotonic) the
    # restore gate has passed after the impact, and how many impacts were seen.
    drain_boot: str | None = None
    started_mono: float | None = None
    started_boot: str | None = None
    gate_since: float | None = None
    impacts: int = 0


class VmState(NamedTuple):
    drain_state: DrainState = DrainState.IN_ROTATION
    since: datetime | None = None
    # Keys of the events that hold the VM out of rotation (empty when in rotation).
    held_by: tuple[str, ...] = ()
    attempts: int = 0  # failed attempts of the current drain or restore
    last_error: str = ""
    # The drain is held back by a safety rule (e.g. min_in_service); why. Retried every run.
    held: str = ""
    # An operator took the VM out by hand (`drainer drain`); maintenance events do not undo it.
    manual: bool = False
    # When the current drain or restore last failed or was held: retries back off from there.
    last_attempt_at: datetime | None = None
    # The last reconcile with Azure: when, and what it found (shown by `status`).
    last_reconcile_at: datetime | None = None
    last_reconcile: str = ""

    @property
    def in_rotation(self) -> bool:
        return self.drain_state is DrainState.IN_ROTATION


class State(NamedTuple):
    events: Mapping[str, EventRecord] = MappingProxyType({})
    vm: VmState = VmState()
    incarnation: int | None = None
    boot_id: str | None = None


class Observation(NamedTuple):
    document: EventsDocument
    vm_name: str
    boot_id: str | None = None
    # The local state was missing, empty or unreadable (rebuilt this run): reconcile with Azure.
    fresh: bool = False
    # What is on this VM disagrees with the state (the probe method's flag file): reconcile.
    drift: str = ""
    # restore_when = "recovered": the monotonic clock now, the restore gate's answer (True also when
    # there is no gate; None: not asked) and how long the daemon saw no poll beyond its interval (a
    # stall: an impact).
    monotonic: float | None = None
    gate_ok: bool | None = None
    stall_seconds: float = 0.0


class Transition(NamedTuple):
    """One line of history: an event or the VM moving from one state to another, or an agent note."""

    subject: str  # "event" | "vm" | "agent"
    from_state: str
    to_state: str
    reason: str
    event_id: str = ""
    event_type: str = ""


class Drain(NamedTuple):
    """Take this VM out of rotation. ``event_ids``: the events it is for (first one leads)."""

    event_ids: tuple[str, ...]
    event_types: tuple[str, ...]
    reason: str
    # Why the platform forces this drain now (the event Started, NotBefore is near): it then goes
    # ahead whatever the pool's floor says. "": an early drain, which waits for a slot.
    forced: str = ""

    @property
    def name(self) -> str:
        return "drain"


class Restore(NamedTuple):
    """Put this VM back exactly as it was."""

    reason: str

    @property
    def name(self) -> str:
        return "restore"


class Reconcile(NamedTuple):
    """Compare what should be (``out``: the VM out of rotation) with what is (the NICs' pool
    references and drainer's records on them) and converge, whatever the local state says."""

    out: bool
    reason: str
    # As for Drain: why the platform forces the VM out now (a reconcile putting it out again then
    # goes whatever the floor says).
    forced: str = ""

    @property
    def name(self) -> str:
        return "reconcile"


class Approve(NamedTuple):
    """Ask Azure to start these events now (POST StartRequests)."""

    event_ids: tuple[str, ...]
    reason: str

    @property
    def name(self) -> str:
        return "approve"


Action = Drain | Restore | Approve | Reconcile


class Decision(NamedTuple):
    state: State
    actions: tuple[Action, ...] = ()
    transitions: tuple[Transition, ...] = ()
    # ``step`` only: the keys of the events that concern this VM (every record but ``other-vm``), so
    # that the caller need not scan a thousand other VMs' records to find them. None: not worked out.
    own: tuple[str, ...] | None = None
