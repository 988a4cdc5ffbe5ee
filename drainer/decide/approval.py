"""The pure rules of early approval and of the restore gate: which events this VM may approve now,
and whether a restore may go ahead. No clock, IO or globals: the runner passes the facts it measured.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from drainer.base.events import EventStatus, ScheduledEvent
from drainer.config import ApprovalConfig, RestoreConfig
from drainer.decide.core import (
    Action,
    Approve,
    Decision,
    DrainState,
    EventRecord,
    EventState,
    State,
    Transition,
    VmState,
)


class ApprovalFacts(NamedTuple):
    """What the runner measured for the approval rule (None: not known)."""

    open_connections: int | None = None
    # Names (case-folded) of the listed VMs, this one included, that are still in a backend pool
    # (any pool, any resource group), read from ARM in this run whenever it is empty (None: unknown).
    listed_in_pool: frozenset[str] | None = None
    # Listed VMs that do not exist as VM resources (a name no VM of this resource group has): the
    # approval would start maintenance for a VM drainer cannot see, so it waits for NotBefore.
    listed_missing: frozenset[str] = frozenset()
    # Hook phases of this VM's drain that failed and are retried (e.g. "post-drain"): the VM is not
    # ready until they succeed.
    phases_failing: tuple[str, ...] = ()
    # How long the load balancer may still send new connections after the VM left rotation (the
    # probe method: until its health probe has failed enough times; 0 for the ARM methods, whose
    # removal is done once the write succeeded).
    takedown_seconds: float = 0.0


# Only the first few listed VMs (by name) approve: a dead one costs a slot, and an event gets at
# most this many approvals.
APPROVERS = 3


def approval_candidates(state: State) -> list[EventRecord]:
    """Events this VM might approve now: its own, active, still Scheduled, not yet approved."""
    return [
        r
        for r in state.events.values()
        if r.state is EventState.ACTIVE and r.event.status is EventStatus.SCHEDULED and r.approved_at is None
    ]


def turn(record: EventRecord, vm_name: str, vm: VmState, now: datetime, cfg: ApprovalConfig) -> str:
    """ "" when it is this VM's turn to approve ``record`` (as far as the order of approvers goes),
    else why not. The listed VMs approve in name order: the k-th k slots after it was both out of
    rotation and aware of the event; only the first ``APPROVERS`` ever do."""
    listed = sorted({r.casefold() for r in record.event.resources})
    me = vm_name.casefold()
    if me not in listed:
        return "not ours"
    rank = listed.index(me)
    if rank >= APPROVERS:
        return f"not approving: {', '.join(listed[:APPROVERS])} approve for the listed VMs"
    # The slots count from when this VM was out *and* knew of the event: a VM out since before the
    # event appeared must still leave the first approver its turn.
    base = max(vm.since, record.first_seen) if vm.since is not None else record.first_seen
    if rank and base is not None:
        wait = rank * cfg.slot_seconds - (now - base).total_seconds()
        if wait > 0:
            return f"waiting: {listed[0]} approves first (this VM's turn in {wait:.0f}s)"
    return ""


def decide_approvals(
    state: State, vm_name: str, now: datetime, cfg: ApprovalConfig, facts: ApprovalFacts
) -> Decision:
    """Which events to approve early, and why the others wait (recorded in each event's ``approval``).

    The rule, in order: the type must be one the config approves; the VM must be drained (unless
    ``when_not_drained``); established connections to the service ports must be gone or
    ``drain_timeout`` have passed since the VM left rotation; NotBefore must be more than
    ``near_seconds`` away (closer, approving gains nothing); it must be this VM's turn (``turn``);
    and every listed VM, this one too, must be out of every pool (one approval starts the event for
    all).
    """
    me = vm_name.casefold()
    records = dict(state.events)
    transitions: list[Transition] = []
    approve: list[str] = []
    vm = state.vm
    for record in approval_candidates(state):
        event = record.event
        listed = {r.casefold() for r in event.resources}
        near = event.not_before is not None and (event.not_before - now).total_seconds() <= cfg.near_seconds
        if not cfg.enabled or event.event_type.value not in cfg.types:
            status = "not approved early (policy)"
        elif me not in listed:
            status = "not ours"  # unreachable for ACTIVE events: kept as a second guard
        elif vm.drain_state is not DrainState.DRAINED and not cfg.when_not_drained:
            status = f"waiting: VM is {vm.drain_state.value}" + (f" ({vm.held})" if vm.held else "")
        elif why := not_ready(vm, now, facts):
            status = why
        elif (
            facts.open_connections
            and vm.since is not None
            and (now - vm.since).total_seconds() < cfg.drain_timeout
        ):
            status = f"waiting: {facts.open_connections} established connections"
        elif near:
            status = "not approving: NotBefore is near (approving gains nothing)"
        elif why := turn(record, vm_name, vm, now, cfg):
            status = why
        elif missing := listed & facts.listed_missing:
            status = f"waiting for NotBefore: {', '.join(sorted(missing))} not found (no such VM resource)"
        elif others := blocking(listed - {me}, facts) | ({me} & set(facts.listed_in_pool or ())):
            status = f"waiting: {', '.join(sorted(others))} still in a pool"
        else:
            status = "approving"
            approve.append(event.event_id)
        if status != record.approval:
            records[event.key] = record._replace(approval=status)
            transitions.append(_approval_transition(event, record.approval, status))
    actions: tuple[Action, ...] = (Approve(tuple(approve), "drained and ready"),) if approve else ()
    return Decision(state=state._replace(events=records), actions=actions, transitions=tuple(transitions))


def not_ready(vm: VmState, now: datetime, facts: ApprovalFacts) -> str:
    """ "" when this VM's own drain is complete, else why not: a hook phase of the drain still
    failing, or the load balancer not yet sure to have seen the VM's health probe fail."""
    if facts.phases_failing:
        return f"waiting: {', '.join(facts.phases_failing)} hooks failing (retried)"
    if facts.takedown_seconds > 0 and vm.since is not None and vm.drain_state is DrainState.DRAINED:
        left = facts.takedown_seconds - (now - vm.since).total_seconds()
        if left > 0:
            return (
                f"waiting: the load balancer's health probe ({left:.0f}s of {facts.takedown_seconds:g}s left)"
            )
    return ""


def _approval_transition(event: ScheduledEvent, old: str, new: str) -> Transition:
    return Transition(
        subject="approval",
        event_id=event.event_id,
        event_type=event.event_type.value,
        from_state=old or "none",
        to_state=new,
        reason="early approval",
    )


def blocking(others: set[str], facts: ApprovalFacts) -> set[str]:
    """The listed VMs (other than this one) that keep the approval back: still in a pool, or unknown."""
    if not others:
        return set()
    if facts.listed_in_pool is None:
        return others  # unknown: every other listed VM may still be serving
    return {p.casefold() for p in facts.listed_in_pool} & others


def record_approval(state: State, action: Approve, error: str | None, now: datetime) -> Decision:
    """Fold the outcome of a StartRequests POST into the events."""
    records = dict(state.events)
    transitions: list[Transition] = []
    for event_id in action.event_ids:
        record = records.get(event_id.casefold())
        if record is None:
            continue
        if error is None:
            records[record.event.key] = record._replace(approved_at=now, approval="approved")
            transitions.append(_approval_transition(record.event, record.approval, "approved"))
        else:
            records[record.event.key] = record._replace(approval=f"approval failed (retried): {error}")
    return Decision(state=state._replace(events=records), transitions=tuple(transitions))


def restore_gate(vm: VmState, now: datetime, cfg: RestoreConfig, healthy: bool | None) -> tuple[bool, str]:
    """Whether the restore may go ahead now: the local health check passed (or there is none), or it
    has been failing for ``health_timeout`` since the restore was decided (then: go, with a warning)."""
    if healthy is None or healthy:
        return True, ""
    waited = (now - vm.since).total_seconds() if vm.since is not None else 0.0
    if waited >= cfg.health_timeout:
        return True, f"health check still failing after {cfg.health_timeout:g}s: restoring anyway"
    return False, f"waiting for the health check ({waited:.0f}s of {cfg.health_timeout:g}s)"


def at_once_candidates(state: State, cfg: ApprovalConfig) -> list[EventRecord]:
    """Events approved at once (issue 14): this VM's ignored events (``approve_ignored``), and its
    ``User`` events once drained (``approve_user``); still Scheduled, not yet approved, of a type the
    config approves, listing this VM alone."""
    drained = state.vm.drain_state is DrainState.DRAINED
    return [
        r
        for r in state.events.values()
        if r.event.status is EventStatus.SCHEDULED
        and r.approved_at is None
        and r.event.event_type.value in cfg.types
        # An approval starts the event for every VM it lists: only for events that list this VM alone
        # (the others go through decide_approvals and its wait for the other listed VMs).
        and len({v.casefold() for v in r.event.resources}) == 1
        and (
            (cfg.approve_ignored and r.state is EventState.IGNORED)
            or (cfg.approve_user and drained and r.state is EventState.ACTIVE and r.event.source == "User")
        )
    ]


def approve_at_once(
    decision: Decision,
    cfg: ApprovalConfig,
    facts: ApprovalFacts | None = None,
    now: datetime | None = None,
) -> Decision:
    """``decision`` (from ``decide_approvals``) with the ``at_once_candidates`` approved too: the VM stays
    in rotation for an ignored event anyway, and a user who restarts a VM wants it now (Microsoft:
    "events with a user event source can be immediately approved"), once its drain is complete
    (``not_ready``: no drain hook failing, the health probe seen failing)."""
    if not cfg.enabled:
        return decision
    extra = at_once_candidates(decision.state, cfg)
    if facts is not None and now is not None and not_ready(decision.state.vm, now, facts):
        extra = [r for r in extra if r.state is EventState.IGNORED]
    first = tuple(i for a in decision.actions if isinstance(a, Approve) for i in a.event_ids)
    approved = set(first)
    extra = [r for r in extra if r.event.event_id not in approved]
    if not extra:
        return decision
    records = dict(decision.state.events)
    transitions = list(decision.transitions)
    for record in extra:
        status = (
            "approving at once ("
            + ("ignored by drainer" if record.state is EventState.IGNORED else "User")
            + ")"
        )
        if status != record.approval:
            records[record.event.key] = record._replace(approval=status)
            transitions.append(_approval_transition(record.event, record.approval, status))
    ids = first + tuple(r.event.event_id for r in extra)
    actions: list[Action] = [a for a in decision.actions if not isinstance(a, Approve)]
    actions.append(Approve(ids, "drained and ready, or approved at once"))
    return Decision(
        state=decision.state._replace(events=records), actions=tuple(actions), transitions=tuple(transitions)
    )
