"""Property-based tests of the decision core (hypothesis, stateful), and fuzzing of the parser and the
config loader. The CI profile is fixed (tests/conftest.py); HYPOTHESIS_PROFILE=long runs more.

The state machine drives the pure core exactly as the runner does (step, then each action's outcome,
then approvals), with random documents (events for this VM and others, every type and status,
cancellations, hardware-failure Started, incarnation resets, duplicate and reappearing ids, malformed
documents), failing actions, crashes between steps and reboots. After every step it checks:

- the VM is never out of rotation for an event that does not list it;
- no approval is decided before the drain completed;
- running again on the same document, with nothing failing, decides nothing;
- once no event lists the VM and nothing fails, it is back in rotation within two runs;
- setting aside other VMs' events listed unchanged (drainer.decide.inert) decides exactly the same.
"""

from __future__ import annotations

import contextlib
import json
import string
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from drainer.base.errors import ConfigError, MalformedDocumentError
from drainer.base.events import document_from_json, parse_document
from drainer.config import SECTIONS, ApprovalConfig, PolicyConfig, from_mapping
from drainer.decide.approval import ApprovalFacts, decide_approvals, record_approval
from drainer.decide.core import (
    Approve,
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
from drainer.decide.inert import split

ME = "web-0"
VMS = ["web-0", "WEB-0", "web-1", "web-2"]
TYPES = ["Freeze", "Reboot", "Redeploy", "Preempt", "Terminate"]
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
POLICY = PolicyConfig()
APPROVAL = ApprovalConfig(near_seconds=0)


class CoreMachine(RuleBasedStateMachine):
    """The runner's loop around the pure core, with the platform and the failures as random rules."""

    def __init__(self) -> None:
        super().__init__()
        self.state = State()
        self.events: dict[str, dict[str, Any]] = {}
        self.incarnation = 1
        self.now = T0
        self.boot = "boot-1"
        self.failing = False
        self.approved_while: list[DrainState] = []

    # -- the platform ------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.run()

    def document(self) -> dict[str, Any]:
        return {"DocumentIncarnation": self.incarnation, "Events": list(self.events.values())}

    @rule(
        event_id=st.sampled_from(["a", "B", "c", "D-1"]),
        event_type=st.sampled_from(TYPES),
        resources=st.lists(st.sampled_from(VMS), min_size=1, max_size=3, unique=True),
        started=st.booleans(),
        duration=st.sampled_from([-1, 0, 5, 30, 300]),
        minutes=st.integers(min_value=0, max_value=60),
    )
    def schedule(
        self,
        *,
        event_id: str,
        event_type: str,
        resources: list[str],
        started: bool,
        duration: int,
        minutes: int,
    ) -> None:
        not_before = (
            "" if started else (self.now + timedelta(minutes=minutes)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        )
        self.events[event_id] = {
            "EventId": event_id,
            "EventType": event_type,
            "ResourceType": "VirtualMachine",
            "Resources": resources,
            "EventStatus": "Started" if started else "Scheduled",
            "NotBefore": not_before,
            "Description": "",
            "EventSource": "Platform",
            "DurationInSeconds": duration,
        }
        self.incarnation += 1

    @precondition(lambda self: bool(self.events))
    @rule(data=st.data())
    def start_event(self, data: st.DataObject) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        self.events[event_id] = {**self.events[event_id], "EventStatus": "Started", "NotBefore": ""}
        self.incarnation += 1

    @precondition(lambda self: bool(self.events))
    @rule(data=st.data())
    def clear_event(self, data: st.DataObject) -> None:
        del self.events[data.draw(st.sampled_from(sorted(self.events)))]
        self.incarnation += 1

    @rule(value=st.integers(min_value=0, max_value=3))
    def incarnation_reset(self, value: int) -> None:
        self.incarnation = value  # the service was re-enabled

    @rule(failing=st.booleans())
    def faults(self, failing: bool) -> None:
        self.failing = failing

    @rule()
    def reboot(self) -> None:
        self.boot = f"boot-{int(self.boot.split('-')[1]) + 1}"

    # -- drainer -----------------------------------------------------------------------------

    def run(self, *, crash_after_save: bool = False, document: dict[str, Any] | None = None) -> list[Any]:
        """One run: step, carry out (fake) actions, approvals. Returns what it decided."""
        self.now += timedelta(seconds=30)
        raw = document if document is not None else self.document()
        observation = Observation(document_from_json(raw), ME, self.boot)
        decision = step(self.state, observation, self.now, POLICY)
        # The runner folds the document without other VMs' events listed unchanged (drainer.decide.inert):
        # that must decide exactly what folding all of them decides.
        view = split(observation.document, self.state, ME)
        if view is not None:
            reduced = step(view.state, observation._replace(document=view.document), self.now, POLICY)
            assert view.merge(reduced) == decision
        self.state = decision.state
        decided: list[Any] = list(decision.actions) + list(decision.transitions)
        if crash_after_save:
            return decided  # the intents were saved; the process died before acting
        for action in decision.actions:
            assert isinstance(action, (Drain, Restore, Reconcile))
            error = "injected failure" if self.failing else None
            if isinstance(action, Reconcile):
                # A reconcile converges towards what the state says: out exactly when drained.
                assert action.out is (self.state.vm.drain_state in (DrainState.DRAINED, DrainState.DRAINING))
                self.state = record_reconcile(self.state, action, "ok", error, self.now, changed=False).state
                continue
            self.state = record_outcome(self.state, action, error, self.now).state
        facts = ApprovalFacts(open_connections=0, listed_in_pool=frozenset())
        approvals = decide_approvals(self.state, ME, self.now, APPROVAL, facts)
        self.state = approvals.state
        for action in approvals.actions:
            assert isinstance(action, Approve)
            self.approved_while.append(self.state.vm.drain_state)
            for event_id in action.event_ids:  # only ever this VM's own, drained-for events
                record = self.state.events[event_id.casefold()]
                assert record.event.concerns(ME)
                assert record.left_rotation_at is not None
            self.state = record_approval(self.state, action, None, self.now).state
        decided += list(approvals.actions)
        return decided

    @rule()
    def check(self) -> None:
        self.run()

    @rule()
    def crash(self) -> None:
        self.run(crash_after_save=True)

    @rule(body=st.sampled_from(['{"Events": 5}', "[]", "not json"]))
    def malformed(self, body: str) -> None:
        before = self.state
        try:
            document_from_json(json.loads(body))
        except (MalformedDocumentError, ValueError):
            pass
        else:  # pragma: no cover - every body above is malformed
            raise AssertionError(body)
        assert self.state is before  # the run stops before deciding: nothing changes

    @precondition(lambda self: not self.failing)
    @rule()
    def idempotent(self) -> None:
        self.run()
        again = self.run()
        self.now -= timedelta(seconds=30)
        assert [d for d in again if isinstance(d, (Drain, Restore, Approve))] == []

    @rule()
    def settle(self) -> None:
        """No event for this VM any more, nothing failing: back in rotation within two runs."""
        self.events = {
            k: e for k, e in self.events.items() if not any(r.lower() == ME for r in e["Resources"])
        }
        self.incarnation += 1
        self.failing = False
        self.run()
        self.run()
        assert self.state.vm.drain_state is DrainState.IN_ROTATION

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def never_out_for_another_vms_event(self) -> None:
        vm = self.state.vm
        if vm.drain_state in (DrainState.DRAINING, DrainState.DRAINED) and not vm.manual:
            # Out (or going out) of rotation: only for active events that list this VM.
            assert vm.held_by
            for key in vm.held_by:
                record = self.state.events[key]
                assert record.event.concerns(ME), record
                assert record.state is EventState.ACTIVE
        for record in self.state.events.values():
            if record.state is EventState.ACTIVE:
                assert record.event.concerns(ME)

    @invariant()
    def approvals_only_when_drained(self) -> None:
        assert all(s is DrainState.DRAINED for s in self.approved_while)


TestCoreMachine = CoreMachine.TestCase


# -- fuzzing the parser and the config loader ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "EventId": json_values | st.text(max_size=40),
        "EventType": json_values | st.sampled_from([*TYPES, "Hibernate", ""]),
        "EventStatus": json_values | st.sampled_from(["Scheduled", "Started", "Completed"]),
        "Resources": json_values | st.lists(st.text(max_size=10), max_size=3),
        "NotBefore": json_values | st.text(max_size=40) | st.just("Mon, 19 Sep 2016 18:29:47 GMT"),
        "DurationInSeconds": json_values,
        "EventSource": json_values,
        "Description": json_values,
    },
)
document_like = st.fixed_dictionaries(
    {},
    optional={"DocumentIncarnation": json_values, "Events": st.lists(event_like, max_size=4) | json_values},
)


@given(st.one_of(document_like, json_values))
def test_parser_raises_only_the_documented_error(raw: Any) -> None:
    try:
        document = document_from_json(raw)
    except MalformedDocumentError:
        return
    for event in document.events:  # what it accepts is well-formed
        assert event.event_id and isinstance(event.resources, tuple)


@given(st.binary(max_size=300))
def test_parser_survives_any_bytes(body: bytes) -> None:
    with contextlib.suppress(MalformedDocumentError):
        parse_document(body)


keys = st.sampled_from(
    [
        "endpoint",
        "deadline",
        "method",
        "min_in_service",
        "timeout",
        "types",
        "service_ports",
        "enabled",
        "level",
        "actions",
        "nics",
        "timeouts",
        "address",
        "health_url",
        "bogus",
        "name",
        "poll_interval",
    ]
)
toml_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.floats(allow_nan=False)
    | st.text(alphabet=string.printable, max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from([*SECTIONS, "state_dir", "dry_run", "disabled_file"]),
        st.dictionaries(keys, toml_values, max_size=4) | toml_values,
        max_size=4,
    )
)
def test_config_loader_raises_only_config_errors_that_name_file_key_and_reason(raw: dict[str, Any]) -> None:
    try:
        from_mapping(raw, "/etc/drainer/config.toml")
    except ConfigError as exc:
        assert exc.path == "/etc/drainer/config.toml"
        assert exc.reason
        assert str(exc).startswith("/etc/drainer/config.toml")
        if exc.key:
            assert exc.key.split(".")[0] in raw or exc.key in raw


def test_machine_sees_reappearing_ids() -> None:
    """A reappearing id and an incarnation reset, spelled out once (the machine finds them at random)."""
    machine = CoreMachine()
    machine.start()
    machine.schedule(event_id="a", event_type="Reboot", resources=[ME], started=False, duration=-1, minutes=5)
    machine.check()
    assert machine.state.vm.drain_state is DrainState.DRAINED
    machine.events.clear()
    machine.check()
    assert machine.state.vm.in_rotation
    machine.schedule(event_id="a", event_type="Reboot", resources=[ME], started=True, duration=-1, minutes=0)
    machine.incarnation_reset(0)
    machine.check()
    assert machine.state.vm.drain_state is DrainState.DRAINED
