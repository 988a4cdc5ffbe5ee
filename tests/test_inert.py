"""Other VMs' events listed unchanged are set aside before the core folds a document (drainer.decide.inert):
what may be set aside. (That it decides what folding everything decides: tests/test_properties.py;
that the daemon still sees every change: tests/test_daemon.py.)"""

from __future__ import annotations

from datetime import datetime, timezone

from drainer.base.events import document_from_json
from drainer.config import PolicyConfig
from drainer.decide.core import EventState, Observation, State, step
from drainer.decide.inert import split, split_remembered

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
POLICY = PolicyConfig(reconcile_interval_seconds=0, reconcile_active_seconds=0)


def _event(event_id: str, vm: str, status: str = "Scheduled") -> dict[str, object]:
    return {
        "EventId": event_id,
        "EventType": "Reboot",
        "ResourceType": "VirtualMachine",
        "Resources": [vm],
        "EventStatus": status,
        "NotBefore": "Mon, 30 Nov 2026 10:00:00 GMT",
    }


def _decided(raw: dict[str, object], vm: str = "web-0") -> State:
    return step(State(), Observation(document_from_json(raw), vm), T0, POLICY).state


def test_only_other_vms_events_recorded_as_listed_are_set_aside() -> None:
    raw = {"DocumentIncarnation": 1, "Events": [_event("A", "web-1"), _event("B", "web-0")]}
    state = _decided(raw)
    view = split(document_from_json(raw), state, "web-0")
    assert view is not None
    assert set(view.inert) == {"a"} and [e.event_id for e in view.document.events] == ["B"]
    assert set(view.state.events) == {"b"}
    # Changed since it was recorded: folded again.
    raw["Events"] = [_event("A", "web-1", "Started"), _event("B", "web-0")]
    assert split(document_from_json(raw), state, "web-0") is None
    # Decided for another VM name (the state moved to another VM): folded again, for this name.
    assert split(document_from_json(raw), _decided(raw, vm="web-7"), "web-1") is None


def test_a_repeated_id_is_left_to_the_core() -> None:
    raw = {"DocumentIncarnation": 1, "Events": [_event("A", "web-1"), _event("C", "web-2")]}
    state = _decided(raw)
    raw["Events"].append(_event("a", "web-0"))  # the same id again, now for this VM
    assert split(document_from_json(raw), state, "web-0") is None
    decided = step(state, Observation(document_from_json(raw), "web-0"), T0, POLICY).state
    assert decided.events["a"].state is EventState.ACTIVE


def test_the_split_is_remembered_only_for_the_very_same_objects() -> None:
    raw = {"DocumentIncarnation": 1, "Events": [_event("A", "web-1")]}
    document, state = document_from_json(raw), _decided(raw)
    first = split_remembered(document, state, "web-0")
    assert first is not None and split_remembered(document, state, "web-0") is first
    # An equal but new state (a save, a reload): worked out again.
    assert split_remembered(document, state._replace(events=dict(state.events)), "web-0") is not first
    assert split_remembered(document, state, "web-1") is None  # web-1's own event: nothing to set aside
