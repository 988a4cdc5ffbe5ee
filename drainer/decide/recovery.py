"""``restore_when = "recovered"``: put the VM back once the impact of an event is over, while the event is
still listed; take it out again at once on a second impact. Pure: the caller passes the boot id, the
monotonic clock and the restore gate's answer it measured (``core.Observation``).

Why: Azure removes a Reboot or Redeploy event minutes after the impact (Microsoft's own timeline: Started
to removed about 10 minutes, impact about 7 seconds), so restoring on removal keeps a healthy VM out of
rotation for most of its window. But Microsoft also documents that while an event is Started another,
shorter impact may follow, and that a VM scheduled for a Reboot may get a Freeze instead: the rule below
never guesses, it acts only on an impact it has seen end.

When is an impact over (``impact_over``)?
- Reboot, Redeploy: the event is Started and the boot id differs from the one of the boot in which the
  event started holding the VM and from the one in which it was Started (an unrelated reboot while it
  was still Scheduled does not count; first seen Started right after a reboot, it counts the boot
  before).
- Freeze: its ``DurationInSeconds`` has passed since it was first seen Started, on the monotonic clock of
  the same boot (immune to wall-clock steps); or the VM rebooted since (the freeze became a reboot).
- Anything else (Preempt, Terminate, unknown, a Freeze of unknown duration): never; the event's removal
  ends it as before.
Then the restore gate (``[restore] health_url``/``health_command``; none: always passing; not asked:
not passing) must pass on every run for ``recovered_grace_seconds`` (monotonic) before the event stops
holding the VM (``EventState.RECOVERED``). A reboot or a stall (the daemon saw no poll for
``stall_seconds`` beyond its interval) while the event is still listed is a second impact: the event
holds the VM again at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from drainer.base.events import EventStatus, EventType
from drainer.decide.model import EventState
from drainer.decide.observe import event_label, event_transition

if TYPE_CHECKING:
    from drainer.config import PolicyConfig
    from drainer.decide.model import EventRecord, Observation, Transition

RECOVERED_TYPES = (EventType.REBOOT, EventType.REDEPLOY, EventType.FREEZE)


def applies(record: EventRecord, policy: PolicyConfig) -> bool:
    """Whether the ``recovered`` rule governs this event."""
    event = record.event
    return (
        event.event_type in RECOVERED_TYPES and policy.restore_when.get(event.event_type.value) == "recovered"
    )


def impact_over(record: EventRecord, obs: Observation) -> str:
    """Why the impact of a Started event is over ("" while it is not, or cannot be known)."""
    event = record.event
    if event.status is not EventStatus.STARTED or obs.boot_id is None:
        return ""
    # A reboot after the drain *and* after the event started: an unrelated reboot while it was still
    # Scheduled must not count (the maintenance's own would still be ahead).
    rebooted = (
        record.drain_boot is not None
        and record.started_boot is not None
        and obs.boot_id not in (record.drain_boot, record.started_boot)
    )
    if event.event_type in (EventType.REBOOT, EventType.REDEPLOY):
        return "the VM rebooted since the drain" if rebooted else ""
    if event.event_type is EventType.FREEZE:
        if rebooted:
            return "the VM rebooted since the drain"
        duration = event.duration_seconds
        if (
            duration is not None
            and duration >= 0
            and record.started_mono is not None
            and record.started_boot == obs.boot_id
            and obs.monotonic is not None
            and obs.monotonic - record.started_mono >= duration
        ):
            return f"the Freeze's {duration}s have passed since it started"
    return ""


def needs_gate(records: Mapping[str, EventRecord], policy: PolicyConfig) -> bool:
    """Whether this run must ask the restore gate (an event under the rule is Started and holds the VM)."""

    return any(
        r.state is EventState.ACTIVE and r.event.status is EventStatus.STARTED and applies(r, policy)
        for r in records.values()
    )


def apply(
    records: dict[str, EventRecord],
    keys: list[str],
    obs: Observation,
    *,
    rebooted: bool,
    previous_boot: str | None,
    policy: PolicyConfig,
    transitions: list[Transition],
) -> None:
    """Move events under the rule between ``active`` and ``recovered`` (in place), noting transitions.
    ``keys``: the records to look at (this VM's: another VM's event is never under the rule)."""

    stalled = obs.stall_seconds >= policy.stall_seconds
    for key in keys:
        record = records[key]
        if record.state not in (EventState.ACTIVE, EventState.RECOVERED) or not applies(record, policy):
            continue
        event = record.event
        new = record
        if new.drain_boot is None and new.state is EventState.ACTIVE:
            new = new._replace(drain_boot=obs.boot_id)
        if event.status is EventStatus.STARTED and new.started_boot is None:
            if rebooted:
                # First seen Started right after a reboot: it may have started before it (and the
                # reboot be its impact). When it started is unknown: no monotonic start.
                new = new._replace(started_boot=previous_boot)
            else:
                new = new._replace(started_mono=obs.monotonic, started_boot=obs.boot_id)
        second = (
            "the VM rebooted"
            if rebooted
            else (f"the VM stalled for {obs.stall_seconds:.0f}s" if stalled else "")
        )
        if new.state is EventState.RECOVERED:
            if second:
                reason = f"second impact while still listed: {second}; out again"
                # Detected once it is over (drainer runs again): the grace period starts now.
                since = obs.monotonic if obs.gate_ok is True else None
                new = new._replace(
                    state=EventState.ACTIVE, reason=reason, gate_since=since, impacts=new.impacts + 1
                )
                transitions.append(
                    event_transition(event, event_label(record.state, event.status), "active/Started", reason)
                )
        else:
            why = impact_over(new, obs)
            if not why or obs.gate_ok is not True or obs.monotonic is None:
                new = new._replace(gate_since=None)
            elif new.gate_since is None or second or obs.monotonic < new.gate_since:
                # The gate starts counting now: after the impact, or again after another one.
                new = new._replace(gate_since=obs.monotonic, impacts=max(new.impacts, 1))
            if new.gate_since is not None and obs.monotonic is not None and why:
                waited = obs.monotonic - new.gate_since
                if waited >= policy.recovered_grace_seconds:
                    reason = f"impact over ({why}), restore gate passed for {waited:.0f}s: back while listed"
                    new = new._replace(state=EventState.RECOVERED, reason=reason)
                    transitions.append(
                        event_transition(
                            event,
                            event_label(record.state, event.status),
                            f"recovered/{event.status.value}",
                            reason,
                        )
                    )
        if new != record:
            records[key] = new
