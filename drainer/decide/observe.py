"""Folding an observed Scheduled Events document into the event records: what each listed event
means for this VM (``classify``), which events are new, changed, gone or back, and the history lines
that say so. Pure, as the rest of the core (``drainer.decide.core``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from drainer.base.events import EventStatus, EventType, ScheduledEvent
from drainer.config import PolicyConfig
from drainer.decide.model import EventRecord, EventState, Observation, State, Transition


def classify(
    event: ScheduledEvent,
    vm_name: str,
    previous: EventState | None,
    now: datetime,
    policy: PolicyConfig,
) -> tuple[EventState, str]:
    """What an observed event means for this VM, and why."""
    if not event.concerns(vm_name):
        return EventState.OTHER_VM, not_listing(vm_name)
    if event.event_type is EventType.UNKNOWN or event.status is EventStatus.UNKNOWN:
        # Unknown is not gone: whatever it is, it holds the VM until it disappears.
        return EventState.ACTIVE, "unknown type or status: holds the VM until it disappears"
    if previous is EventState.RECOVERED:
        # Sticky too: only a second impact (drainer.decide.recovery) makes it hold the VM again.
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


def not_listing(vm_name: str) -> str:
    """``classify``'s reason for another VM's event: it names the VM it was decided for."""
    return f"does not list {vm_name}"


def unchanged_other_vm(old: EventRecord | None, event: ScheduledEvent, not_mine: str) -> bool:
    """Whether ``event`` is another VM's, recorded as listed now and decided for this VM's name
    (``not_mine``: ``not_listing(name)``): folding it again would change nothing."""
    return (
        old is not None
        and (old.event is event or old.event == event)
        and old.state is EventState.OTHER_VM
        and old.reason == not_mine
    )


def observe_events(
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
    not_mine = not_listing(obs.vm_name)
    other_vm = EventState.OTHER_VM
    get = previous.get
    for key, event in zip(keys, document.events, strict=True):
        old = get(key)
        if repeated:
            if key in seen or (key in mine and not event.concerns(obs.vm_name)):
                continue
            seen.add(key)
        if unchanged_other_vm(old, event, not_mine):
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
                event_transition(old.event, event_label(old.state, old.event.status), "cleared", reason)
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
        return record, event_transition(event, "new", new_state.value, reason)
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
    return record, event_transition(
        event, event_label(old.state, old.event.status), event_label(new_state, event.status), reason
    )


def event_label(state: EventState, status: EventStatus) -> str:
    if state is EventState.CLEARED:
        return "cleared"
    return f"{state.value}/{status.value}"


def event_transition(event: ScheduledEvent, from_state: str, to_state: str, reason: str) -> Transition:
    return Transition(
        subject="event",
        event_id=event.event_id,
        event_type=event.event_type.value,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
    )
