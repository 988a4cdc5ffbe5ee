"""The decision core: a pure function from (state, observation, now, policy) to (state, actions).

No clock, IO or globals in here: the caller passes ``now`` and the observed document, persists the new
state, carries out the actions and reports their outcome back through ``record_outcome``. Everything
about *when* a VM leaves or rejoins rotation is decided in this module, so it can be tested as a table.

Event states (``EventState``):
- ``other-vm``: the event does not list this VM; recorded, never acted on.
- ``ignored``:  it lists this VM but the policy says it is not worth a drain (e.g. a 5 s Freeze).
- ``pending``:  it will be acted on when NotBefore is within the configured lead time.
- ``active``:   it holds this VM out of rotation.
- ``cleared``:  it disappeared from IMDS (completed or cancelled).
- ``recovered``: still listed, but its impact is over and it no longer holds the VM
  (``restore_when = "recovered"``, see ``drainer.recovery``).

VM drain states (``DrainState``): ``in_rotation`` → ``draining`` → ``drained`` → ``restoring`` →
``in_rotation``. ``draining`` and ``restoring`` are the intents, persisted before the action runs, so a
run that dies mid-way is completed by the next one.

Every type here is a NamedTuple: as typed and immutable as a frozen dataclass, and several times cheaper
to define, which matters because the every-minute idle run pays for each class at start-up.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import NamedTuple

from drainer.config import PolicyConfig
from drainer.events import EventsDocument, EventStatus, EventType, ScheduledEvent


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
    # restore_when = "recovered" (drainer.recovery): the boot in which the event started holding the
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


def classify(
    event: ScheduledEvent,
    vm_name: str,
    previous: EventState | None,
    now: datetime,
    policy: PolicyConfig,
) -> tuple[EventState, str]:
    """What an observed event means for this VM, and why."""
    if not event.concerns(vm_name):
        return EventState.OTHER_VM, f"does not list {vm_name}"
    if event.event_type is EventType.UNKNOWN or event.status is EventStatus.UNKNOWN:
        # Unknown is not gone: whatever it is, it holds the VM until it disappears.
        return EventState.ACTIVE, "unknown type or status: holds the VM until it disappears"
    if previous is EventState.RECOVERED:
        # Sticky too: only a second impact (drainer.recovery) makes it hold the VM again.
        return EventState.RECOVERED, "impact over, back in rotation while still listed"
    if previous is EventState.ACTIVE:
        # Sticky: once out for an event, stay out until it clears (a moved NotBefore must not make
        # the VM flap in and out of rotation).
        return EventState.ACTIVE, f"{event.status.value}, still holding the VM out"
    if policy.action_for(event.event_type) == "ignore":
        return EventState.IGNORED, f"policy ignores {event.event_type.value}"
    if (
        event.event_type is EventType.FREEZE
        and event.duration_seconds is not None
        and event.duration_seconds < policy.freeze_min_duration_seconds
    ):
        return (
            EventState.IGNORED,
            f"Freeze of {event.duration_seconds}s is shorter than {policy.freeze_min_duration_seconds}s",
        )
    if event.status is EventStatus.STARTED:
        if previous is None or previous is EventState.CLEARED:
            return EventState.ACTIVE, "Started without notice (e.g. hardware failure): act at once"
        return EventState.ACTIVE, "Started"
    if (
        policy.lead_time_seconds > 0
        and event.not_before is not None
        and event.not_before - now > timedelta(seconds=policy.lead_time_seconds)
    ):
        return EventState.PENDING, f"NotBefore is more than {policy.lead_time_seconds}s away"
    return EventState.ACTIVE, "Scheduled"


def _observe_events(
    state: State, obs: Observation, now: datetime, policy: PolicyConfig
) -> tuple[dict[str, EventRecord], list[Transition], list[str]]:
    """The records after folding in the document, the transitions, and the keys of the records that
    concern this VM (all but ``other-vm``: the only ones any later decision looks at).

    With a thousand events of other VMs listed unchanged (the daemon polls every second), the cost
    must be that of the few that concern this VM: those are skipped by identity, set operations
    stand in for loops, and nothing later scans every record.
    """
    previous = state.events
    records: dict[str, EventRecord] = dict(previous)
    transitions: list[Transition] = []
    own: list[str] = []
    document = obs.document
    keys = document.keys_of()
    listed = set(keys)
    # A duplicate id within one document: the first entry that lists this VM wins (an entry for
    # another VM must never hide this VM's), else the first entry.
    # (Only worked out when an id repeats: with a thousand events listed, every poll pays for it.)
    repeated = len(listed) != len(keys)
    mine = {e.key for e in document.events if e.concerns(obs.vm_name)} if repeated else set()
    seen: set[str] = set()
    not_mine = f"does not list {obs.vm_name}"  # classify's reason: the name it was decided for
    other_vm = EventState.OTHER_VM
    get = previous.get
    for key, event in zip(keys, document.events, strict=True):
        old = get(key)
        if repeated:
            if key in seen or (key in mine and not event.concerns(obs.vm_name)):
                continue
            seen.add(key)
        if (
            old is not None
            and (old.event is event or old.event == event)
            and old.state is other_vm
            and old.reason == not_mine
        ):
            continue  # another VM's event (for this VM name), listed unchanged: nothing to decide
        record, transition = _fold_event(old, event, obs.vm_name, now, policy)
        if transition is not None:
            transitions.append(transition)
        records[key] = record
        if record.state is not other_vm:
            own.append(key)
    # Whatever is no longer listed: cleared now (or earlier), never another VM's any more.
    horizon = now - timedelta(days=policy.retention_days)
    for key in sorted(previous.keys() - listed):  # sorted: the same order however it was split
        old = previous[key]
        if old.state is not EventState.CLEARED:
            what = "completed" if old.event.status is EventStatus.STARTED else "cancelled"
            reason = f"no longer listed ({what})"
            records[key] = old._replace(
                state=EventState.CLEARED, reason=reason, updated_at=now, cleared_at=now
            )
            transitions.append(
                _event_transition(old.event, _event_label(old.state, old.event.status), "cleared", reason)
            )
        elif old.cleared_at is not None and old.cleared_at < horizon:
            del records[key]  # forget long-cleared events so the database stays small
            continue
        own.append(key)
    return records, transitions, own


def _fold_event(
    old: EventRecord | None, event: ScheduledEvent, vm_name: str, now: datetime, policy: PolicyConfig
) -> tuple[EventRecord, Transition | None]:
    """One listed event folded into its record (``old``: None when first seen)."""
    new_state, reason = classify(event, vm_name, old.state if old else None, now, policy)
    if old is None:
        record = EventRecord(
            event=event,
            state=new_state,
            reason=reason,
            first_seen=now,
            last_seen=now,
            updated_at=now,
            started_at=now if event.status is EventStatus.STARTED else None,
        )
        return record, _event_transition(event, "new", new_state.value, reason)
    changed = new_state is not old.state or event.status is not old.event.status
    started_at = old.started_at
    if event.status is EventStatus.STARTED and (started_at is None or old.state is EventState.CLEARED):
        started_at = now
    record = old._replace(
        event=event,
        state=new_state,
        # Another VM's event always carries the reason it was last decided with ("does not list
        # <name>"): the skip of unchanged other-VM events trusts it to name the VM it was decided for.
        reason=reason if changed or new_state is EventState.OTHER_VM else old.reason,
        # Not bumped on every poll: an event listed unchanged must cost no write (issue 14).
        last_seen=now if changed or event != old.event else old.last_seen,
        updated_at=now if changed else old.updated_at,
        started_at=started_at,
        cleared_at=None,
    )
    if old.state is EventState.CLEARED:
        reason = f"reappeared: {reason}"
        record = record._replace(
            reason=reason,
            first_seen=now,
            drain_boot=None,
            started_mono=None,
            started_boot=None,
            gate_since=None,
            impacts=0,
        )
    if not changed:
        return record, None
    return record, _event_transition(
        event, _event_label(old.state, old.event.status), _event_label(new_state, event.status), reason
    )


def _event_label(state: EventState, status: EventStatus) -> str:
    if state is EventState.CLEARED:
        return "cleared"
    return f"{state.value}/{status.value}"


def _event_transition(event: ScheduledEvent, from_state: str, to_state: str, reason: str) -> Transition:
    return Transition(
        subject="event",
        event_id=event.event_id,
        event_type=event.event_type.value,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
    )


def _vm_transition(old: DrainState, new: DrainState, reason: str) -> Transition:
    return Transition(subject="vm", from_state=old.value, to_state=new.value, reason=reason)


def step(state: State, obs: Observation, now: datetime, policy: PolicyConfig) -> Decision:
    """Fold one observed document into the state and decide what to do."""
    transitions: list[Transition] = []
    incarnation = obs.document.incarnation
    if state.incarnation is not None and incarnation is not None and incarnation < state.incarnation:
        transitions.append(
            Transition(
                subject="agent",
                from_state=f"incarnation {state.incarnation}",
                to_state=f"incarnation {incarnation}",
                reason="DocumentIncarnation went backwards: the service was re-enabled",
            )
        )
    rebooted = state.boot_id is not None and obs.boot_id is not None and obs.boot_id != state.boot_id
    if rebooted:
        transitions.append(
            Transition(
                subject="agent",
                from_state=f"boot {state.boot_id}",
                to_state=f"boot {obs.boot_id}",
                reason="the VM rebooted since the last run",
            )
        )
    records, event_transitions, own = _observe_events(state, obs, now, policy)
    transitions.extend(event_transitions)
    if any(w == "recovered" for w in policy.restore_when.values()):
        from drainer import recovery  # noqa: PLC0415 - only when the policy asks for it

        recovery.apply(
            records,
            own,
            obs,
            rebooted=rebooted,
            previous_boot=state.boot_id,
            policy=policy,
            transitions=transitions,
        )

    mine = [records[k] for k in own]  # other VMs' events never weigh in on a decision
    active = sorted(
        (r for r in mine if r.state is EventState.ACTIVE),
        key=lambda r: (r.first_seen, r.event.event_id),
    )
    vm = state.vm
    actions: list[Action] = []
    current = vm.drain_state
    if active or vm.manual:
        held_by = tuple(r.event.key for r in active)
        ids = tuple(r.event.event_id for r in active)
        types = tuple(r.event.event_type.value for r in active)
        forced = forced_by(active, now, policy)
        if current is DrainState.DRAINED and rebooted:
            # Local effects of a drain (stopped listeners, hooks) do not survive a reboot: redo it.
            vm = _move(
                vm,
                to=DrainState.DRAINING,
                now=now,
                held_by=held_by,
                transitions=transitions,
                reason="re-drain after reboot",
            )
            actions.append(Drain(ids, types, "re-drain after reboot", forced))
        elif current is DrainState.DRAINED:
            # An event that arrives while the VM is already out: out for it from now on.
            for key in set(held_by) - set(vm.held_by):
                if records[key].left_rotation_at is None:
                    records[key] = records[key]._replace(left_rotation_at=now)
            vm = vm._replace(held_by=held_by)
        else:
            if ids:
                reason = f"{types[0]} {ids[0]}" + (f" and {len(ids) - 1} more" if len(ids) > 1 else "")
            else:
                reason = "manual hold"
            if current is not DrainState.DRAINING:
                vm = _move(
                    vm,
                    to=DrainState.DRAINING,
                    now=now,
                    held_by=held_by,
                    transitions=transitions,
                    reason=reason,
                )
                actions.append(Drain(ids, types, reason, forced))
            else:
                # A retry of a failed or held drain backs off; a new event retries at once, and so
                # does a held drain the platform now forces (it will not be held again).
                if held_by != vm.held_by or retry_due(vm, now, policy) or (vm.held and forced):
                    actions.append(Drain(ids, types, reason, forced))
                vm = vm._replace(held_by=held_by)
    elif current is not DrainState.IN_ROTATION:
        reason = "no event holds this VM any more"
        if current is not DrainState.RESTORING:
            # held_by stays: the events this restore is for (their hooks get them), cleared once back.
            vm = _move(
                vm,
                to=DrainState.RESTORING,
                now=now,
                held_by=vm.held_by,
                transitions=transitions,
                reason=reason,
            )
        if retry_due(vm, now, policy):
            actions.append(Restore(reason))

    # While a drain is pending (held by the floor, or failed and backing off), its retry is the one
    # way out: a reconcile taking the VM out would pass the floor's hold and the back-off.
    if not actions and vm.drain_state is not DrainState.DRAINING:
        why = obs.drift or _reconcile_due(vm, mine, now, policy, fresh=obs.fresh, rebooted=rebooted)
        if why:
            out = vm.drain_state in (DrainState.DRAINED, DrainState.DRAINING)
            forced = forced_by(active, now, policy) if out else ""
            actions.append(Reconcile(out, why, forced))
    new_state = State(
        events=records,
        vm=vm,
        incarnation=incarnation if incarnation is not None else state.incarnation,
        boot_id=obs.boot_id if obs.boot_id is not None else state.boot_id,
    )
    return Decision(state=new_state, actions=tuple(actions), transitions=tuple(transitions), own=tuple(own))


def own_events(state: State, own: tuple[str, ...] | None = None) -> State:
    """``state`` with only the events that concern this VM (``own``: their keys, when known)."""
    if own is None:
        return state._replace(
            events={k: r for k, r in state.events.items() if r.state is not EventState.OTHER_VM}
        )
    return state._replace(events={k: state.events[k] for k in own if k in state.events})


def _reconcile_due(
    vm: VmState,
    records: list[EventRecord],
    now: datetime,
    policy: PolicyConfig,
    *,
    fresh: bool,
    rebooted: bool,
) -> str:
    """Why a reconcile is due now ("" when it is not)."""
    if fresh:
        return "the local state was missing or unreadable"
    if rebooted:
        return "the VM rebooted"
    busy = not vm.in_rotation or any(r.state in (EventState.ACTIVE, EventState.PENDING) for r in records)
    failed = vm.last_reconcile.startswith("failed")
    if failed:
        # A reconcile that failed may be all that stands between a VM and its pools (its state was
        # lost while it was out): retried like a failed restore, at most retry_max_seconds apart.
        interval = min(policy.retry_max_seconds, policy.reconcile_active_seconds or policy.retry_max_seconds)
        if vm.last_reconcile_at is None or interval <= 0:
            return "the last reconcile failed"
    elif busy:
        interval = policy.reconcile_active_seconds
    else:
        interval = policy.reconcile_interval_seconds
    if interval <= 0:
        return ""
    if vm.last_reconcile_at is None:
        return "never reconciled"
    elapsed = (now - vm.last_reconcile_at).total_seconds()
    if elapsed < 0:  # the wall clock stepped back: due now rather than stalled
        return "the clock stepped back"
    if elapsed >= interval:
        return "the last reconcile failed" if failed else ("an event is in progress" if busy else "periodic")
    return ""


def record_reconcile(
    state: State, action: Reconcile, found: str, error: str | None, now: datetime, *, changed: bool
) -> Decision:
    """Fold the outcome of a reconcile into the state (shown by ``status``)."""
    text = f"failed: {error}" if error is not None else found
    vm = state.vm._replace(last_reconcile_at=now, last_reconcile=text[:500])
    transitions: tuple[Transition, ...] = ()
    if changed or error is not None:
        transitions = (
            Transition(
                subject="agent",
                from_state="reconcile",
                to_state="failed" if error is not None else "converged",
                reason=f"{action.reason}: {text}"[:500],
            ),
        )
    return Decision(state=state._replace(vm=vm), transitions=transitions)


def set_manual(state: State, on: bool, now: datetime) -> Decision:
    """An operator's ``drainer drain`` (on) or ``drainer restore`` (off), recorded as a transition.

    The next ``step`` then drains or restores; a restore still waits for active events.
    """
    if state.vm.manual is on:
        return Decision(state=state)
    transition = Transition(
        subject="vm",
        from_state="manual" if state.vm.manual else "automatic",
        to_state="manual" if on else "automatic",
        reason="operator took the VM out by hand" if on else "operator released the manual hold",
    )
    return Decision(state=state._replace(vm=state.vm._replace(manual=on)), transitions=(transition,))


def _jitter(seed: str) -> float:
    """A number in [0, 1) that looks random and depends only on ``seed``."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") / 2**32


def forced_by(active: list[EventRecord], now: datetime, policy: PolicyConfig) -> str:
    """Why the platform forces a drain now ("" when it does not): an event Started, or NotBefore
    within ``force_before_seconds``. Preempt and Terminate are forced by their type (the drain
    methods know)."""
    for record in active:
        event = record.event
        if event.status is EventStatus.STARTED:
            return f"{event.event_type.value} {event.event_id} started"
        if event.not_before is not None:
            left = (event.not_before - now).total_seconds()
            if left <= policy.force_before_seconds:
                return f"{event.event_type.value} {event.event_id}: NotBefore in {max(left, 0):.0f}s"
    return ""


def retry_due(vm: VmState, now: datetime, policy: PolicyConfig) -> bool:
    """Whether a failed or held drain or restore may be tried again now.

    Retries back off (1, 2, 4 ... seconds, at most ``retry_max_seconds``; a held drain every
    ``retry_max_seconds / 4``), each jittered down to half of that, so a daemon polling every second
    does not hammer ARM through an outage and a fleet does not retry in step.
    A one-shot run every minute is not slowed down by it (the default cap is 60 s).
    """
    if vm.last_attempt_at is None or policy.retry_max_seconds <= 0:
        return True
    if vm.held:
        delay = policy.retry_max_seconds / 4
    else:
        delay = min(float(policy.retry_max_seconds), 2.0 ** max(vm.attempts - 1, 0))
    # Jittered between half the delay and all of it, so VMs that failed together (an ARM outage, a
    # throttled fleet) do not retry together. Derived from the failure's own time: pure, and
    # different on every VM.
    delay *= 0.5 + 0.5 * _jitter(f"{vm.last_attempt_at.isoformat()}/{vm.attempts}/{vm.held}")
    elapsed = (now - vm.last_attempt_at).total_seconds()
    # A negative elapsed time means the wall clock stepped back: due now, never stalled.
    return elapsed < 0 or elapsed >= delay


def _move(
    vm: VmState,
    *,
    to: DrainState,
    now: datetime,
    held_by: tuple[str, ...],
    transitions: list[Transition],
    reason: str,
) -> VmState:
    transitions.append(_vm_transition(vm.drain_state, to, reason))
    return VmState(
        drain_state=to,
        since=now,
        held_by=held_by,
        manual=vm.manual,
        last_reconcile_at=vm.last_reconcile_at,
        last_reconcile=vm.last_reconcile,
    )


def record_outcome(
    state: State, action: Drain | Restore, error: str | None, now: datetime, *, held: bool = False
) -> Decision:
    """Fold the outcome of an action into the state.

    ``error`` is None on success; with ``held`` it is the reason a safety rule held the drain back.
    """
    vm = state.vm
    expected = DrainState.DRAINING if isinstance(action, Drain) else DrainState.RESTORING
    if vm.drain_state is not expected:
        return Decision(state=state)  # the intent changed meanwhile; nothing to record
    if error is not None and held:
        vm = vm._replace(held=error, last_attempt_at=now)
        if state.vm.held == error:
            return Decision(state=state._replace(vm=vm))
        transition = Transition(subject="vm", from_state=vm.drain_state.value, to_state="held", reason=error)
        return Decision(state=state._replace(vm=vm), transitions=(transition,))
    if error is not None:
        vm = vm._replace(attempts=vm.attempts + 1, last_error=error, held="", last_attempt_at=now)
        return Decision(state=state._replace(vm=vm))
    transitions: list[Transition] = []
    done = DrainState.DRAINED if isinstance(action, Drain) else DrainState.IN_ROTATION
    held_by = vm.held_by if isinstance(action, Drain) else ()
    records = dict(state.events)
    for key in vm.held_by:
        record = records.get(key)
        if record is None:
            continue
        if isinstance(action, Drain) and record.left_rotation_at is None:
            records[key] = record._replace(left_rotation_at=now)
        elif isinstance(action, Restore) and record.returned_at is None:
            records[key] = record._replace(returned_at=now)
    state = state._replace(events=records)
    # A drain or restore that succeeded left Azure as it should be: it counts as a reconcile.
    vm = vm._replace(last_reconcile_at=now, last_reconcile=f"{action.name} succeeded")
    vm = _move(
        vm, to=done, now=now, held_by=held_by, transitions=transitions, reason=f"{action.name} succeeded"
    )
    return Decision(state=state._replace(vm=vm), transitions=tuple(transitions))
