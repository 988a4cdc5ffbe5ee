"""restore_when = "recovered" in the pure core: back once the impact is over and the gate has held,
out again at once on a second impact, never back before the impact."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from drainer.base.events import document_from_json
from drainer.config import PolicyConfig
from drainer.decide.core import Decision, Drain, EventState, Observation, Restore, State, record_outcome, step

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
WHEN = MappingProxyType(
    {
        "Reboot": "recovered",
        "Redeploy": "recovered",
        "Freeze": "recovered",
        "Preempt": "cleared",
        "Terminate": "cleared",
    }
)
POLICY = PolicyConfig(
    retry_max_seconds=0,
    reconcile_interval_seconds=0,
    reconcile_active_seconds=0,
    restore_when=WHEN,
    recovered_grace_seconds=60,
)


def _event(status: str = "Scheduled", event_type: str = "Reboot", duration: int = -1) -> dict[str, Any]:
    return {
        "EventId": "A",
        "EventType": event_type,
        "ResourceType": "VirtualMachine",
        "Resources": ["web-0"],
        "EventStatus": status,
        "NotBefore": "" if status == "Started" else "Tue, 24 Nov 2026 10:00:00 GMT",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": duration,
    }


class Vm:
    """One VM through the core: every run at ``mono`` seconds on boot ``boot``, every action succeeding."""

    def __init__(self, policy: PolicyConfig = POLICY) -> None:
        self.state = State()
        self.policy = policy
        self.mono = 1000.0
        self.boot = "boot-1"
        self.actions: list[str] = []

    def run(
        self, *events: dict[str, Any], gate: bool | None = True, stall: float = 0.0, advance: float = 1.0
    ) -> Decision:
        self.mono += advance
        obs = Observation(
            document_from_json({"DocumentIncarnation": 1, "Events": list(events)}),
            "web-0",
            self.boot,
            monotonic=self.mono,
            gate_ok=gate,
            stall_seconds=stall,
        )
        now = T0 + timedelta(seconds=self.mono)
        decision = step(self.state, obs, now, self.policy)
        state = decision.state
        for action in decision.actions:
            if isinstance(action, (Drain, Restore)):
                state = record_outcome(state, action, None, now).state
                self.actions.append(action.name)
        self.state = state
        return decision

    def reboot(self, seconds: float = 30.0) -> None:
        """The VM reboots: a new boot id, and the monotonic clock starts again."""
        number = int(self.boot.rpartition("-")[2]) + 1
        self.boot = f"boot-{number}"
        self.mono = seconds

    @property
    def in_rotation(self) -> bool:
        return self.state.vm.in_rotation


def _drained_and_rebooted(vm: Vm) -> None:
    vm.run(_event())
    assert not vm.in_rotation
    vm.run(_event("Started"))
    vm.reboot()
    vm.run(_event("Started"))  # the first run after the impact: the gate starts counting


def test_recovered_restores_after_the_boot_and_the_grace_period() -> None:
    vm = Vm()
    _drained_and_rebooted(vm)
    assert not vm.in_rotation
    vm.run(_event("Started"), advance=58)
    assert not vm.in_rotation, "the gate has not passed for the grace period yet"
    decision = vm.run(_event("Started"), advance=2)
    assert [a.name for a in decision.actions] == ["restore"]
    assert vm.in_rotation
    assert vm.state.events["a"].state is EventState.RECOVERED
    # Still listed afterwards: nothing more happens, nothing changes.
    before = vm.state
    decision = vm.run(_event("Started"), advance=30)
    assert decision.actions == () and decision.transitions == ()
    assert vm.state == before
    # Its removal changes the record only.
    decision = vm.run()
    assert decision.actions == ()
    assert vm.state.events["a"].state is EventState.CLEARED


def test_cleared_keeps_today_rule() -> None:
    vm = Vm(POLICY._replace(restore_when=MappingProxyType(dict.fromkeys(WHEN, "cleared"))))
    _drained_and_rebooted(vm)
    for _ in range(5):
        vm.run(_event("Started"), advance=600)
        assert not vm.in_rotation
    vm.run()
    assert vm.in_rotation


@pytest.mark.parametrize("gate", [False, None], ids=["gate-failing", "gate-not-asked"])
def test_a_failing_or_unasked_gate_keeps_the_vm_out(gate: bool | None) -> None:
    vm = Vm()
    _drained_and_rebooted(vm)
    for _ in range(5):
        vm.run(_event("Started"), gate=gate, advance=600)
        assert not vm.in_rotation


def test_one_failing_gate_restarts_the_grace_period() -> None:
    vm = Vm()
    _drained_and_rebooted(vm)
    vm.run(_event("Started"), advance=50)
    vm.run(_event("Started"), gate=False, advance=5)
    vm.run(_event("Started"), advance=5)  # counting again from here
    vm.run(_event("Started"), advance=59)
    assert not vm.in_rotation
    vm.run(_event("Started"), advance=1)
    assert vm.in_rotation


def test_never_restores_before_the_impact() -> None:
    """Started for an hour without a reboot: the impact has not happened (or it was a freeze of unknown
    length): the VM stays out until the event clears."""
    vm = Vm()
    vm.run(_event())
    for _ in range(60):
        vm.run(_event("Started"), advance=60)
        assert not vm.in_rotation
    vm.run()
    assert vm.in_rotation


def test_a_reboot_seen_only_after_it_happened_does_not_count() -> None:
    """First seen already Started after a reboot (a host failure): the boot it drained in is the new one,
    so no impact is known to be over; the removal ends it."""
    vm = Vm(POLICY._replace(recovered_grace_seconds=0))
    vm.run(_event("Started"))
    for _ in range(5):
        vm.run(_event("Started"), advance=600)
        assert not vm.in_rotation


@pytest.mark.parametrize("how", ["reboot", "stall"])
def test_a_second_impact_drains_again_at_once(how: str) -> None:
    vm = Vm()
    _drained_and_rebooted(vm)
    vm.run(_event("Started"), advance=60)
    assert vm.in_rotation
    if how == "reboot":
        vm.reboot()
        decision = vm.run(_event("Started"))
    else:
        decision = vm.run(_event("Started"), stall=POLICY.stall_seconds, advance=8)
    assert [a.name for a in decision.actions] == ["drain"]
    assert not vm.in_rotation
    assert vm.state.events["a"].impacts == 2
    # Back again only after another full grace period.
    vm.run(_event("Started"), advance=59)
    assert not vm.in_rotation
    vm.run(_event("Started"), advance=2)
    assert vm.in_rotation
    assert vm.actions == ["drain", "drain", "restore", "drain", "restore"]


def test_a_short_gap_is_not_a_stall() -> None:
    vm = Vm()
    _drained_and_rebooted(vm)
    vm.run(_event("Started"), advance=60)
    decision = vm.run(_event("Started"), stall=POLICY.stall_seconds - 0.1)
    assert decision.actions == ()
    assert vm.in_rotation


def test_freeze_recovers_once_its_duration_has_passed() -> None:
    vm = Vm(POLICY._replace(recovered_grace_seconds=0))
    freeze = _event(event_type="Freeze", duration=40)
    vm.run(freeze)
    started = _event("Started", "Freeze", 40)
    vm.run(started)
    vm.run(started, advance=39)
    assert not vm.in_rotation
    vm.run(started, advance=1)
    assert vm.in_rotation


def test_freeze_of_unknown_duration_waits_for_the_removal() -> None:
    vm = Vm(POLICY._replace(recovered_grace_seconds=0))
    started = _event("Started", "Freeze", -1)
    vm.run(_event(event_type="Freeze"))
    for _ in range(5):
        vm.run(started, advance=3600)
        assert not vm.in_rotation


def test_the_wall_clock_does_not_count() -> None:
    """The grace period is measured on the monotonic clock: a wall clock jumping ahead changes nothing."""
    vm = Vm()
    _drained_and_rebooted(vm)
    obs = Observation(
        document_from_json({"DocumentIncarnation": 1, "Events": [_event("Started")]}),
        "web-0",
        vm.boot,
        monotonic=vm.mono + 1,
        gate_ok=True,
    )
    decision = step(vm.state, obs, T0 + timedelta(days=30), POLICY)
    assert decision.actions == ()
    assert decision.state.events["a"].state is EventState.ACTIVE


def test_the_daemon_measures_a_stall_from_the_end_of_the_last_check() -> None:
    from drainer.app.daemon import _stall

    assert _stall([], 1.0) == 0.0, "no check ended yet: nothing known"
    now = time.monotonic()
    assert _stall([now - 0.5], 1.0) == 0.0, "within the poll interval"
    assert _stall([now - 9.0], 1.0) >= 7.9, "eight seconds beyond the interval"


def test_an_unrelated_reboot_while_scheduled_does_not_count() -> None:
    """Drained, then the VM reboots for another reason while the event is still Scheduled: once it
    Starts, the maintenance's own reboot is still ahead; the VM stays out."""
    vm = Vm(POLICY._replace(recovered_grace_seconds=0))
    vm.run(_event())
    vm.reboot()
    vm.run(_event())  # still Scheduled, in the new boot
    for _ in range(3):
        vm.run(_event("Started"), advance=60)
        assert not vm.in_rotation
    vm.reboot()  # now the maintenance's reboot
    vm.run(_event("Started"))
    assert vm.in_rotation


def test_started_first_seen_right_after_the_reboot_counts() -> None:
    """A one-shot run every minute may see the event Scheduled, then, after the reboot, Started."""
    vm = Vm(POLICY._replace(recovered_grace_seconds=0))
    vm.run(_event())
    vm.reboot()
    vm.run(_event("Started"))
    assert vm.in_rotation
