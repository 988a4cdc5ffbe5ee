"""The crash matrix: the process is killed (os._exit) at every step boundary of drain, approval and
restore, with the nic method, hooks and approvals all on; each time the following runs converge to
the right end state, the VM is back in exactly its pools, and it was approved at most once and never
before its drain completed."""

from __future__ import annotations

import pytest

from drainer.emulator.control import EmulatorControl
from tests.agent_entry import CRASH_EXIT
from tests.conftest import DEFAULT_CONFIG, Agent

DRAIN_POINTS = [
    "decided",
    "saved",
    "before-drain",
    "pre-drain-done",
    "nic-recorded",
    "nic-written",
    "builtin-drain-done",
    "after-drain",
    "recorded-drain",
    "before-approve",
    "after-approve",
]
RESTORE_POINTS = [
    "decided",
    "saved",
    "before-restore",
    "pre-restore-done",
    "nic-restored",
    "builtin-restore-done",
    "after-restore",
    "recorded-restore",
]
CASES = [("drain", p) for p in DRAIN_POINTS] + [("restore", p) for p in RESTORE_POINTS]


def _pools(control: EmulatorControl) -> list[str]:
    nic = control.nic("web-0-nic")
    return sorted(
        r["id"]
        for r in nic["properties"]["ipConfigurations"][0]["properties"]["loadBalancerBackendAddressPools"]
    )


@pytest.mark.parametrize(("phase", "point"), CASES, ids=[f"{a}:{b}" for a, b in CASES])
def test_crash_point_converges(agent: Agent, control: EmulatorControl, phase: str, point: str) -> None:
    control.add_load_balancer("lb-web", pools=["web-pool", "api-pool"])
    for vm in ("web-0", "web-1"):
        control.join(vm, "lb-web", "web-pool")
        control.join(vm, "lb-web", "api-pool")
    hooks = agent.tmp / "hooks"
    for phase_dir in ("pre-drain", "post-drain", "pre-restore", "post-restore"):
        (hooks / phase_dir).mkdir(parents=True)
        hook = hooks / phase_dir / "10-note"
        hook.write_text(f'#!/bin/sh\necho "$DRAINER_PHASE" >> "{agent.tmp / "phases"}"\n')
        hook.chmod(0o755)
    hooks.chmod(0o755)
    agent.config_text = (
        DEFAULT_CONFIG.replace("enabled = false", "enabled = true") + f'\n[hooks]\ndir = "{hooks}"\n'
    )
    original = _pools(control)
    event_id = control.schedule("Reboot", ["web-0"], not_before_in=900)
    if phase == "restore":
        assert agent.check().returncode == 0
        assert _pools(control) == []
        control.remove(event_id)
    crashed = agent.check(TEST_CRASH_AT=point)
    assert crashed.returncode == CRASH_EXIT, f"{point} was not reached:\n{crashed.stderr[-2000:]}"
    # Converge: a few ordinary runs, as cron would do them.
    for _ in range(2):
        done = agent.check()
        assert done.returncode == 0, done.stderr[-2000:]
    approvals = control.state()["approvals"]
    assert len(approvals) <= 1
    if approvals:
        first_write = next(r for r in control.requests() if r["method"] == "PUT")
        assert first_write["at"] <= approvals[0]["at"]  # never approved before the drain's write
    if phase == "drain":
        assert agent.status()["vm"]["drain_state"] == "drained"
        assert _pools(control) == []
        assert len(approvals) == 1
        control.remove(event_id)
        assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "in_rotation"
    assert _pools(control) == original
    assert agent.status()["vm"]["removed"] == []
    writes = control.arm_writes()
    assert all(w["name"] == "web-0-nic" for w in writes)  # nobody else's NIC touched
    # Settled: one more run changes nothing.
    assert agent.check().returncode == 0
    assert control.arm_writes() == writes
