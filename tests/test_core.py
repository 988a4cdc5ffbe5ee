"""The pure decision core, table-style: the shared scenarios plus the cases they do not pin down."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from drainer.base.events import document_from_json
from drainer.config import PolicyConfig
from drainer.decide.core import (
    Decision,
    Drain,
    DrainState,
    EventState,
    Observation,
    Reconcile,
    Restore,
    State,
    record_outcome,
    record_reconcile,
    step,
)
from tests.conftest import load_scenarios

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)


# Retries are due on every run here (the runs share one instant); the backoff has its own tests below.
def policy_of(**fields: object) -> PolicyConfig:
    """A policy without periodic reconciles (they are tested on their own below)."""
    return PolicyConfig(**{"reconcile_interval_seconds": 0, "reconcile_active_seconds": 0, **fields})  # type: ignore[arg-type]


POLICY = policy_of(retry_max_seconds=0)


def _run(
    state: State,
    raw: dict[str, Any],
    *,
    vm: str = "web-0",
    now: datetime = T0,
    policy: PolicyConfig = POLICY,
    boot_id: str | None = "boot-1",
    fail: bool = False,
) -> tuple[State, Decision]:
    """One run with every action succeeding (or failing): what the runner does, minus the IO."""
    decision = step(state, Observation(document_from_json(raw), vm, boot_id), now, policy)
    new = decision.state
    for action in decision.actions:
        new = record_outcome(new, action, "boom" if fail else None, now).state
    return new, decision


@pytest.mark.parametrize("scenario", load_scenarios(), ids=lambda s: s["name"])
def test_shared_scenarios(scenario: dict[str, Any]) -> None:
    state = State()
    now = T0
    for number, item in enumerate(scenario["steps"]):
        state, _ = _run(state, item["document"], vm=scenario["vm"], now=now)
        assert state.vm.in_rotation is item["in_rotation"], (
            f"{scenario['name']} step {number}: {scenario['why']}"
        )
        # Running again on the same document changes nothing and asks for nothing.
        again, decision = _run(state, item["document"], vm=scenario["vm"], now=now)
        assert decision.actions == ()
        assert decision.transitions == ()
        assert again == state
        now += timedelta(minutes=1)


def _event(event_id: str = "A", **fields: Any) -> dict[str, Any]:
    event = {
        "EventId": event_id,
        "EventType": "Reboot",
        "ResourceType": "VirtualMachine",
        "Resources": ["web-0"],
        "EventStatus": "Scheduled",
        "NotBefore": "Tue, 24 Nov 2026 10:00:00 GMT",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }
    event.update(fields)
    return event


def _doc(incarnation: int, *events: dict[str, Any]) -> dict[str, Any]:
    return {"DocumentIncarnation": incarnation, "Events": list(events)}


def test_scheduled_drains_once_and_asks_for_nothing_more() -> None:
    decision = step(State(), Observation(document_from_json(_doc(1, _event())), "web-0"), T0, POLICY)
    assert [type(a) for a in decision.actions] == [Drain]
    assert decision.state.vm.drain_state is DrainState.DRAINING
    vm_moves = [(t.from_state, t.to_state) for t in decision.transitions if t.subject == "vm"]
    assert vm_moves == [("in_rotation", "draining")]


def test_failed_drain_is_retried_and_counts_attempts() -> None:
    state, _ = _run(State(), _doc(1, _event()), fail=True)
    assert state.vm.drain_state is DrainState.DRAINING
    assert state.vm.attempts == 1
    assert state.vm.last_error == "boom"
    decision = step(state, Observation(document_from_json(_doc(1, _event())), "web-0"), T0, POLICY)
    assert [type(a) for a in decision.actions] == [Drain]
    state, _ = _run(state, _doc(1, _event()), fail=True)
    assert state.vm.attempts == 2


def test_failed_restore_is_retried_until_it_succeeds() -> None:
    state, _ = _run(State(), _doc(1, _event()))
    for attempt in range(1, 4):
        state, decision = _run(state, _doc(2), fail=True)
        assert [type(a) for a in decision.actions] == [Restore]
        assert state.vm.drain_state is DrainState.RESTORING
        assert state.vm.attempts == attempt
    state, _ = _run(state, _doc(2))
    assert state.vm.in_rotation


def test_event_reappearing_during_restore_drains_again() -> None:
    state, _ = _run(State(), _doc(1, _event()))
    state, _ = _run(state, _doc(2), fail=True)  # restore failed: still restoring
    state, decision = _run(state, _doc(3, _event("B")))
    assert [type(a) for a in decision.actions] == [Drain]
    assert state.vm.drain_state is DrainState.DRAINED


def test_lead_time_waits_until_not_before_is_near() -> None:
    policy = policy_of(lead_time_seconds=300)
    doc = _doc(1, _event(NotBefore="Tue, 24 Nov 2026 10:00:00 GMT"))
    state, decision = _run(State(), doc, policy=policy, now=T0)  # 60 minutes ahead
    assert decision.actions == ()
    assert state.events["a"].state is EventState.PENDING
    state, decision = _run(state, doc, policy=policy, now=T0 + timedelta(minutes=55))
    assert [type(a) for a in decision.actions] == [Drain]
    # Once out, a NotBefore moved later does not bring the VM back (no flapping).
    later = _doc(2, _event(NotBefore="Tue, 24 Nov 2026 18:00:00 GMT"))
    state, decision = _run(state, later, policy=policy, now=T0 + timedelta(minutes=56))
    assert decision.actions == ()
    assert not state.vm.in_rotation


def test_lead_time_does_not_delay_a_started_event() -> None:
    policy = policy_of(lead_time_seconds=60)
    state, _decision = _run(State(), _doc(1, _event(EventStatus="Started", NotBefore="")), policy=policy)
    assert not state.vm.in_rotation
    assert "hardware failure" in state.events["a"].reason


def test_policy_can_ignore_a_type() -> None:
    policy = policy_of(actions={"Reboot": "ignore"})
    state, decision = _run(State(), _doc(1, _event()), policy=policy)
    assert decision.actions == ()
    assert state.events["a"].state is EventState.IGNORED
    assert state.vm.in_rotation


@pytest.mark.parametrize(
    ("duration", "drains"), [(0, False), (5, False), (29, False), (30, True), (300, True), (-1, True)]
)
def test_freeze_threshold(duration: int, drains: bool) -> None:
    state, _ = _run(State(), _doc(1, _event(EventType="Freeze", DurationInSeconds=duration)))
    assert state.vm.in_rotation is not drains


def test_other_vm_event_is_recorded_never_acted_on() -> None:
    state, decision = _run(State(), _doc(1, _event(Resources=["web-1"])))
    assert decision.actions == ()
    assert state.events["a"].state is EventState.OTHER_VM


def test_event_that_stops_listing_this_vm_releases_it() -> None:
    state, _ = _run(State(), _doc(1, _event(Resources=["web-0", "web-1"])))
    assert not state.vm.in_rotation
    state, decision = _run(state, _doc(2, _event(Resources=["web-1"])))
    assert [type(a) for a in decision.actions] == [Restore]
    assert state.vm.in_rotation


def test_reboot_in_the_middle_redrains_and_is_noted() -> None:
    state, _ = _run(State(), _doc(1, _event()), boot_id="boot-1")
    state, decision = _run(state, _doc(2, _event(EventStatus="Started", NotBefore="")), boot_id="boot-2")
    assert [type(a) for a in decision.actions] == [Drain]
    assert any(t.subject == "agent" and "rebooted" in t.reason for t in decision.transitions)
    assert state.boot_id == "boot-2"
    assert state.vm.drain_state is DrainState.DRAINED
    state, decision = _run(state, _doc(3), boot_id="boot-2")
    assert state.vm.in_rotation


def test_reboot_while_in_rotation_reconciles_and_notes_the_boot_id() -> None:
    state, _ = _run(State(), _doc(1), boot_id="boot-1")
    state, decision = _run(state, _doc(1), boot_id="boot-2")
    assert decision.actions == (Reconcile(False, "the VM rebooted"),)
    assert state.boot_id == "boot-2"


def test_reconcile_when_fresh_then_periodically_and_more_often_while_busy() -> None:
    policy = PolicyConfig(reconcile_interval_seconds=1800, reconcile_active_seconds=300, retry_max_seconds=0)
    fresh = step(State(), Observation(document_from_json(_doc(1)), "web-0", fresh=True), T0, policy)
    assert fresh.actions == (Reconcile(False, "the local state was missing or unreadable"),)
    done = record_reconcile(fresh.state, fresh.actions[0], "nothing to restore", None, T0, changed=False)
    state = done.state
    idle = Observation(document_from_json(_doc(1)), "web-0")
    assert step(state, idle, T0 + timedelta(seconds=1799), policy).actions == ()
    assert step(state, idle, T0 + timedelta(seconds=1800), policy).actions == (Reconcile(False, "periodic"),)
    # The wall clock stepped back: due now rather than stalled until it catches up.
    assert step(state, idle, T0 - timedelta(hours=1), policy).actions == (
        Reconcile(False, "the clock stepped back"),
    )
    other = Observation(document_from_json(_doc(2, _event(Resources=["web-1"]))), "web-0")
    assert step(state, other, T0 + timedelta(seconds=300), policy).actions == ()  # not ours: idle
    # Drained for an event: every reconcile_active_seconds, towards "out".
    drained, _ = _run(State(), _doc(3, _event()), policy=policy)
    drained = drained._replace(vm=drained.vm._replace(last_reconcile_at=T0))
    busy = Observation(document_from_json(_doc(3, _event())), "web-0")
    assert step(drained, busy, T0 + timedelta(seconds=299), policy).actions == ()
    assert step(drained, busy, T0 + timedelta(seconds=300), policy).actions == (
        Reconcile(True, "an event is in progress"),
    )
    # A failed reconcile is retried like a failed restore (at most retry_max_seconds apart), and
    # leaves a history line.
    failed = record_reconcile(state, Reconcile(False, "periodic"), "", "ARM said 503", T0, changed=False)
    assert failed.transitions and failed.state.vm.last_reconcile.startswith("failed")
    assert step(failed.state, idle, T0, policy).actions == (Reconcile(False, "the last reconcile failed"),)
    spaced = policy._replace(retry_max_seconds=60)
    assert step(failed.state, idle, T0 + timedelta(seconds=29), spaced).actions == ()
    assert step(failed.state, idle, T0 + timedelta(seconds=60), spaced).actions == (
        Reconcile(False, "the last reconcile failed"),
    )


def test_a_failed_retry_is_due_at_once_when_the_clock_steps_back() -> None:
    policy = policy_of(retry_max_seconds=3600)
    state, _ = _run(State(), _doc(1, _event()), policy=policy, fail=True, now=T0)
    retry = step(
        state,
        Observation(document_from_json(_doc(1, _event())), "web-0", "boot-1"),
        T0 - timedelta(hours=2),
        policy,
    )
    assert [type(a) for a in retry.actions] == [Drain]


def test_an_unknown_type_or_status_holds_the_vm_until_it_disappears() -> None:
    state, _ = _run(State(), _doc(1, _event()))
    assert not state.vm.in_rotation
    for changed in ({"EventStatus": "Paused"}, {"EventType": "Hibernate"}):
        state, decision = _run(state, _doc(2, _event(**changed)))
        assert not state.vm.in_rotation and decision.actions == ()
    state, decision = _run(State(), _doc(1, _event(EventType="Hibernate")))
    assert [type(a) for a in decision.actions] == [Drain]  # a new unknown event drains too
    state, decision = _run(state, _doc(2))
    assert state.vm.in_rotation


def test_incarnation_going_backwards_is_noted_and_state_kept() -> None:
    state, _ = _run(State(), _doc(40, _event()))
    state, decision = _run(state, _doc(1, _event()))
    notes = [t for t in decision.transitions if t.subject == "agent"]
    assert len(notes) == 1
    assert "re-enabled" in notes[0].reason
    assert decision.actions == ()
    assert state.incarnation == 1


def test_event_id_case_changes_are_the_same_event() -> None:
    state, _ = _run(State(), _doc(1, _event("abc-def")))
    state, decision = _run(state, _doc(2, _event("ABC-DEF", EventStatus="Started", NotBefore="")))
    assert list(state.events) == ["abc-def"]
    assert decision.actions == ()


def test_duplicate_ids_in_one_document_count_once() -> None:
    state, _decision = _run(State(), _doc(1, _event("A"), _event("A", Resources=["web-1"])))
    assert len(state.events) == 1
    assert state.events["a"].state is EventState.ACTIVE


def test_outcome_for_a_stale_intent_is_ignored() -> None:
    state, _decision = _run(State(), _doc(1, _event()))
    # A drain outcome arriving when the VM is already drained records nothing.
    assert record_outcome(state, Drain(("A",), ("Reboot",), ""), None, T0).state == state


def test_long_cleared_events_are_forgotten() -> None:
    state, _ = _run(State(), _doc(1, _event()))
    state, _ = _run(state, _doc(2), now=T0)
    assert "a" in state.events
    state, _ = _run(state, _doc(2), now=T0 + timedelta(days=31))
    assert state.events == {}


def test_step_is_pure() -> None:
    state = State()
    obs = Observation(document_from_json(_doc(1, _event())), "web-0", "b")
    assert step(state, obs, T0, POLICY) == step(state, obs, T0, POLICY)
    assert state == State()
    assert state._replace() == state


def test_retries_back_off_and_a_new_event_retries_at_once() -> None:
    policy = policy_of(retry_max_seconds=60)
    state, _ = _run(State(), _doc(1, _event()), policy=policy, fail=True)  # attempt 1 fails at T0
    decision = step(state, Observation(document_from_json(_doc(1, _event())), "web-0"), T0, policy)
    assert decision.actions == ()  # within 0.5 s (1 s, jittered) of the failure: wait
    later = T0 + timedelta(seconds=1)
    decision = step(state, Observation(document_from_json(_doc(1, _event())), "web-0"), later, policy)
    assert [type(a) for a in decision.actions] == [Drain]
    state, _ = _run(state, _doc(1, _event()), policy=policy, now=later, fail=True)  # attempt 2
    decision = step(
        state,
        Observation(document_from_json(_doc(1, _event())), "web-0"),
        later + timedelta(seconds=0.9),
        policy,
    )
    assert decision.actions == ()  # 2 s after the second failure, jittered to 1 s at the least
    decision = step(
        state, Observation(document_from_json(_doc(2, _event(), _event("B"))), "web-0"), later, policy
    )
    assert [type(a) for a in decision.actions] == [Drain]  # a new event: at once


def test_restore_retries_back_off_but_never_stop() -> None:
    policy = policy_of(retry_max_seconds=60)
    state, _ = _run(State(), _doc(1, _event()), policy=policy)
    now = T0
    for attempt in range(1, 10):
        state, _ = _run(state, _doc(2), policy=policy, now=now, fail=True)
        assert state.vm.attempts == attempt
        now += timedelta(seconds=61)  # the cap: a restore is always retried within a minute
    state, _ = _run(state, _doc(2), policy=policy, now=now)
    assert state.vm.in_rotation


def test_held_drain_rechecks_every_quarter_of_the_cap() -> None:
    policy = policy_of(retry_max_seconds=60)
    decision = step(State(), Observation(document_from_json(_doc(1, _event())), "web-0"), T0, policy)
    (drain,) = decision.actions
    assert isinstance(drain, Drain)
    held = record_outcome(decision.state, drain, "held: too few", T0, held=True).state
    soon = step(
        held, Observation(document_from_json(_doc(1, _event())), "web-0"), T0 + timedelta(seconds=7), policy
    )
    assert soon.actions == ()
    due = step(
        held, Observation(document_from_json(_doc(1, _event())), "web-0"), T0 + timedelta(seconds=15), policy
    )
    assert [type(a) for a in due.actions] == [Drain]


def test_another_vms_event_listed_unchanged_is_decided_again_for_a_new_vm_name() -> None:
    """The shortcut for unchanged events of other VMs holds only for the name they were decided for."""
    doc = _doc(1, _event())  # lists web-0
    state, _ = _run(State(), doc, vm="web-9")
    assert state.events["a"].state is EventState.OTHER_VM
    again, decision = _run(state, doc, vm="web-9")
    assert decision.transitions == () and again == state
    state, decision = _run(state, doc, vm="web-0")
    assert [type(a) for a in decision.actions] == [Drain]


def _crowd(count: int, *mine: dict[str, Any], status: str = "Scheduled") -> dict[str, Any]:
    """A document with ``count`` events for other VMs, then ``mine``."""
    others = [_event(f"other-{n}", Resources=[f"web-{n + 10}"], EventStatus=status) for n in range(count)]
    return _doc(1, *others, *mine)


def _scan_own(state: State) -> set[str]:
    return {k for k, r in state.events.items() if r.state is not EventState.OTHER_VM}


def test_a_reused_document_decides_exactly_as_a_freshly_parsed_one() -> None:
    """The daemon passes the very same document object while IMDS answers the same bytes: the skip by
    identity must decide what comparing by value decides, as time passes and events change."""
    policy = policy_of(retry_max_seconds=0, lead_time_seconds=600)
    raw = _crowd(50, _event("mine", NotBefore="Tue, 24 Nov 2026 09:20:00 GMT"))
    reused = document_from_json(raw)
    by_identity = by_value = State()
    for minute in range(15):
        now = T0 + timedelta(minutes=minute)
        one = step(by_identity, Observation(reused, "web-0", "boot-1"), now, policy)
        two = step(by_value, Observation(document_from_json(raw), "web-0", "boot-1"), now, policy)
        assert one.state == two.state and one.actions == two.actions and one.transitions == two.transitions
        assert set(one.own or ()) == _scan_own(one.state)
        by_identity = by_value = one.state
    # The own event went from pending to active on time, with the document unchanged all along.
    assert by_identity.events["mine"].state is EventState.ACTIVE
    assert by_identity.vm.drain_state is DrainState.DRAINING


def test_other_vms_events_that_change_or_go_are_still_recorded_among_a_thousand_unchanged() -> None:
    state, _ = _run(State(), _crowd(1000))
    assert len(state.events) == 1000 and _scan_own(state) == set()
    unchanged, decision = _run(state, _crowd(1000))
    assert decision.transitions == () and unchanged == state and decision.own == ()
    changed = _crowd(1000)
    changed["Events"][500]["EventStatus"] = "Started"
    del changed["Events"][900]
    state, decision = _run(state, changed)
    moves = {(t.event_id, t.from_state, t.to_state) for t in decision.transitions}
    assert moves == {
        ("other-500", "other-vm/Scheduled", "other-vm/Started"),
        ("other-900", "other-vm/Scheduled", "cleared"),
    }
    assert set(decision.own or ()) == _scan_own(state) == {"other-900"}  # cleared: no other VM's now
    assert state.events["other-500"].event.status.value == "Started"


def test_a_duplicate_id_among_a_crowd_still_lets_this_vms_entry_win() -> None:
    raw = _crowd(100)
    raw["Events"].insert(0, _event("other-7", Resources=["web-99"]))  # the same id, another VM
    raw["Events"].append(_event("other-7"))  # and once more, for this VM
    state, decision = _run(State(), raw)
    assert state.events["other-7"].state is EventState.ACTIVE
    assert [type(a) for a in decision.actions] == [Drain]
    again, decision = _run(state, raw)
    assert decision.transitions == () and again == state
    assert set(decision.own or ()) == _scan_own(state) == {"other-7"}
