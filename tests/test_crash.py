"""A run killed at any step boundary leaves a state the next run completes.

The process is really killed (``os._exit`` at the named checkpoint, through tests/agent_entry.py), so
nothing after that point (no ``finally``, no destructor) runs.
"""

from __future__ import annotations

import pytest

from drainer.emulator.control import EmulatorControl
from tests.agent_entry import CRASH_EXIT
from tests.conftest import Agent, log_records

DRAIN_POINTS = ["decided", "saved", "before-drain", "after-drain", "recorded-drain"]
RESTORE_POINTS = ["decided", "saved", "before-restore", "after-restore", "recorded-restore"]


def _settled(agent: Agent) -> None:
    """One more run changes nothing: no transition, exit 0."""
    done = agent.check()
    assert done.returncode == 0, done.stderr
    moves = [r for r in log_records(done.stderr) if r["event"].endswith("transition")]
    assert moves == [], moves


@pytest.mark.parametrize("point", DRAIN_POINTS)
def test_crash_during_drain_converges(agent: Agent, control: EmulatorControl, point: str) -> None:
    control.schedule("Reboot", ["web-0"])
    crashed = agent.check(TEST_CRASH_AT=point)
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    done = agent.check()
    assert done.returncode == 0, done.stderr
    status = agent.status()
    assert status["vm"]["drain_state"] == "drained"
    assert [e["state"] for e in status["events"]] == ["active"]
    _settled(agent)
    history = [h["to_state"] for h in agent.history() if h["subject"] == "vm"]
    assert history == ["draining", "drained"]


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_crash_during_restore_converges(agent: Agent, control: EmulatorControl, point: str) -> None:
    event_id = control.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    control.remove(event_id)
    crashed = agent.check(TEST_CRASH_AT=point)
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    done = agent.check()
    assert done.returncode == 0, done.stderr
    status = agent.status()
    assert status["vm"]["drain_state"] == "in_rotation"
    assert [e["state"] for e in status["events"]] == ["cleared"]
    _settled(agent)
    history = [h["to_state"] for h in agent.history() if h["subject"] == "vm"]
    assert history == ["draining", "drained", "restoring", "in_rotation"]


def test_crash_before_save_leaves_the_state_untouched(agent: Agent, control: EmulatorControl) -> None:
    control.schedule("Reboot", ["web-0"])
    assert agent.check(TEST_CRASH_AT="decided").returncode == CRASH_EXIT
    assert agent.status()["events"] == []
    assert agent.history() == []


def test_crash_releases_the_lock(agent: Agent) -> None:
    assert agent.check(TEST_CRASH_AT="decided").returncode == CRASH_EXIT
    assert agent.check().returncode == 0
