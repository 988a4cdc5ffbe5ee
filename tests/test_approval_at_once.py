"""Approve at once (issue 14): events drainer ignores, and events a user started (EventSource "User"),
each behind its own config option. Pure rule first, then through the CLI against the emulator."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from drainer.base.events import document_from_json
from drainer.config import ApprovalConfig, PolicyConfig
from drainer.decide.approval import ApprovalFacts, approve_at_once, decide_approvals
from drainer.decide.core import Approve, Observation, State, record_outcome, step
from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
APPROVING = DEFAULT_CONFIG.replace("enabled = false", "enabled = true\npeer_check_interval = 0")


def _state(
    event_type: str, source: str, duration: int = -1, resources: tuple[str, ...] = ("web-0",)
) -> State:
    raw = {
        "DocumentIncarnation": 1,
        "Events": [
            {
                "EventId": "A",
                "EventType": event_type,
                "ResourceType": "VirtualMachine",
                "Resources": list(resources),
                "EventStatus": "Scheduled",
                "NotBefore": "Tue, 24 Nov 2026 10:00:00 GMT",
                "EventSource": source,
                "DurationInSeconds": duration,
            }
        ],
    }
    decision = step(State(), Observation(document_from_json(raw), "web-0", "b"), T0, PolicyConfig())
    state = decision.state
    for action in decision.actions:
        if action.name == "drain":
            state = record_outcome(state, action, None, T0).state  # type: ignore[arg-type]
    return state


def _approved(state: State, cfg: ApprovalConfig, facts: ApprovalFacts | None = None) -> tuple[str, ...]:
    decision = approve_at_once(decide_approvals(state, "web-0", T0, cfg, facts or ApprovalFacts()), cfg)
    return tuple(i for a in decision.actions if isinstance(a, Approve) for i in a.event_ids)


@pytest.mark.parametrize(
    ("state", "cfg", "expected"),
    [
        (_state("Freeze", "Platform", 5), ApprovalConfig(), ("A",)),
        (_state("Freeze", "Platform", 5), ApprovalConfig(approve_ignored=False), ()),
        (_state("Freeze", "Platform", 5, ("web-0", "web-1")), ApprovalConfig(), ()),
        (_state("Freeze", "Platform", 5), ApprovalConfig(enabled=False), ()),
        (_state("Freeze", "Platform", 5), ApprovalConfig(types=("Reboot",)), ()),
    ],
    ids=["ignored-freeze", "option-off", "lists-another-vm", "approval-off", "type-not-approved"],
)
def test_ignored_events(state: State, cfg: ApprovalConfig, expected: tuple[str, ...]) -> None:
    assert _approved(state, cfg) == expected
    assert state.vm.in_rotation  # ignored: never drained for it


def test_user_event_is_approved_once_drained_without_waiting_for_connections() -> None:
    facts = ApprovalFacts(open_connections=3)
    user = _state("Reboot", "User")
    platform = _state("Reboot", "Platform")
    assert not user.vm.in_rotation
    assert _approved(user, ApprovalConfig(), facts) == ("A",)
    assert _approved(user, ApprovalConfig(approve_user=False), facts) == ()
    assert _approved(platform, ApprovalConfig(), facts) == ()


def test_user_event_is_not_approved_before_the_drain() -> None:
    undrained = _state("Reboot", "User")
    undrained = undrained._replace(vm=undrained.vm._replace(drain_state=undrained.vm.drain_state.DRAINING))
    assert _approved(undrained, ApprovalConfig()) == ()


def test_cli_approves_a_short_freeze_at_once_and_stays_in_rotation(
    agent: Agent, pool: EmulatorControl
) -> None:
    agent.config_text = APPROVING
    event = pool.schedule("Freeze", ["web-0"], duration=5, not_before_in=900)
    assert agent.check().returncode == 0
    assert [a["event_id"] for a in pool.state()["approvals"]] == [event]
    assert any("web-0-nic" in m for m in pool.membership().values())


def test_cli_keeps_a_short_freeze_waiting_when_the_option_is_off(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = APPROVING.replace("[approval]", "[approval]\napprove_ignored = false")
    pool.schedule("Freeze", ["web-0"], duration=5, not_before_in=900)
    assert agent.check().returncode == 0
    assert pool.state()["approvals"] == []


def test_cli_approves_a_user_reboot_once_drained(agent: Agent, pool: EmulatorControl) -> None:
    """A connection stays open to the service port: a Platform event would wait for it."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        port = server.getsockname()[1]
        agent.config_text = APPROVING.replace(
            "service_ports = []", f"service_ports = [{port}]\ndrain_timeout = 600"
        )
        event = pool.schedule("Reboot", ["web-0"], source="User", not_before_in=900)
        assert agent.check().returncode == 0
        assert [a["event_id"] for a in pool.state()["approvals"]] == [event]
        assert not any("web-0-nic" in m for m in pool.membership().values()), "drained before the approval"
    finally:
        for sock in (client, accepted, server):
            sock.close()
