"""The decision core: a pure function from (state, observation, now, policy) to (state, actions).

No clock, IO or globals in here: the caller passes ``now`` and the observed document, persists the new
state, carries out the actions and reports their outcome back through ``record_outcome``. Everything
about *when* a VM leaves or rejoins rotation is decided here, so it can be tested as a table. The
types are in ``drainer.decide.model`` (re-exported here), the folding of a document into the event records
in ``drainer.decide.observe``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from drainer.base.events import EventStatus
from drainer.config import PolicyConfig
from drainer.decide.model import (
    Action,
    Approve,
    Decision,
    Drain,
    DrainState,
    EventRecord,
    EventState,
    Observation,
    Reconcile,
    Restore,
    State,
    Transition,
    VmState,
)
from drainer.decide.observe import classify, observe_events

__all__ = [
    "Action",
    "Approve",
    "Decision",
    "Drain",
    "DrainState",
    "EventRecord",
    "EventState",
    "Observation",
    "Reconcile",
    "Restore",
    "State",
    "Transition",
    "VmState",
    "classify",
    "forced_by",
    "own_events",
    "record_outcome",
    "record_reconcile",
    "retry_due",
    "set_manual",
    "step",
]


def _vm_transition(old: DrainState, new: DrainState, reason: str) -> Transition:
    return Transition(subject="vm", from_state=old.value, to_state=new.value, reason=reason)


def step(state: State, obs: Observation, now: datetime, policy: PolicyConfig) -> Decision:
    """Fold one observed document into the state and decide what to do."""
    transitions, rebooted = _agent_notes(state, obs)
    incarnation = obs.document.incarnation
    records, event_transitions, own = observe_events(state, obs, now, policy)
    transitions.extend(event_transitions)
    if any(w == "recovered" for w in policy.restore_when.values()):
        from drainer.decide import recovery  # noqa: PLC0415 - only when the policy asks for it

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
    actions: list[Action] = []
    if active or state.vm.manual:
        vm = _hold(state.vm, active, records, now, policy, rebooted=rebooted, out=(actions, transitions))
    else:
        vm = _release(state.vm, now, policy, out=(actions, transitions))
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


def _agent_notes(state: State, obs: Observation) -> tuple[list[Transition], bool]:
    """History lines about the agent itself (incarnation went back, the VM rebooted), and whether it
    rebooted since the last run."""
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
    return transitions, rebooted


def _hold(
    vm: VmState,
    active: list[EventRecord],
    records: dict[str, EventRecord],
    now: datetime,
    policy: PolicyConfig,
    *,
    rebooted: bool,
    out: tuple[list[Action], list[Transition]],
) -> VmState:
    """Events (or an operator's hold) keep this VM out: drain it, or keep it drained. ``records`` is
    updated in place (when the VM left rotation for each event); actions and transitions are
    appended to ``out``."""
    actions, transitions = out
    current = vm.drain_state
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
        return vm
    if current is DrainState.DRAINED:
        # An event that arrives while the VM is already out: out for it from now on.
        for key in set(held_by) - set(vm.held_by):
            if records[key].left_rotation_at is None:
                records[key] = records[key]._replace(left_rotation_at=now)
        return vm._replace(held_by=held_by)
    if ids:
        reason = f"{types[0]} {ids[0]}" + (f" and {len(ids) - 1} more" if len(ids) > 1 else "")
    else:
        reason = "manual hold"
    if current is not DrainState.DRAINING:
        vm = _move(
            vm, to=DrainState.DRAINING, now=now, held_by=held_by, transitions=transitions, reason=reason
        )
        actions.append(Drain(ids, types, reason, forced))
        return vm
    # A retry of a failed or held drain backs off; a new event retries at once, and so does a held
    # drain the platform now forces (it will not be held again).
    if held_by != vm.held_by or retry_due(vm, now, policy) or (vm.held and forced):
        actions.append(Drain(ids, types, reason, forced))
    return vm._replace(held_by=held_by)


def _release(
    vm: VmState, now: datetime, policy: PolicyConfig, *, out: tuple[list[Action], list[Transition]]
) -> VmState:
    """Nothing holds this VM any more: restore it (a failed restore retries after its back-off)."""
    actions, transitions = out
    current = vm.drain_state
    if current is DrainState.IN_ROTATION:
        return vm
    reason = "no event holds this VM any more"
    if current is not DrainState.RESTORING:
        # held_by stays: the events this restore is for (their hooks get them), cleared once back.
        vm = _move(
            vm, to=DrainState.RESTORING, now=now, held_by=vm.held_by, transitions=transitions, reason=reason
        )
    if retry_due(vm, now, policy):
        actions.append(Restore(reason))
    return vm


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
        # Every failed attempt is a line of history: a gap between draining and drained has its reason.
        attempt = Transition(
            subject="vm",
            from_state=vm.drain_state.value,
            to_state=f"{action.name} failed",
            reason=f"attempt {vm.attempts}: {error}",
        )
        return Decision(state=state._replace(vm=vm), transitions=(attempt,))
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
