"""restore_when = "recovered" through the CLI, against the emulator: the emulator plays the impact (the
VM's boot id changes in the file drainer reads), the event lingers after it, and a second impact may
follow. Every wait below waits for a condition the emulator reports, never for a fixed time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent

POOL = "web-pool"
RECOVERED = """
[policy]
retry_max_seconds = 0
recovered_grace_seconds = 0

[policy.restore_when]
Reboot = "recovered"
"""


def _config(extra: str = "") -> str:
    return (
        DEFAULT_CONFIG.replace("[policy]\n", "", 1).replace("retry_max_seconds = 0\n", "", 1)
        + RECOVERED
        + extra
    )


def _in_pool(control: EmulatorControl) -> bool:
    return any("web-0-nic" in members for members in control.membership().values())


def _boot(control: EmulatorControl) -> str:
    return str(control.state()["boot_ids"]["web-0"])


def _wait_for_new_boot(control: EmulatorControl, old: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = _boot(control)
        if current != old:
            return current
        time.sleep(0.02)
    raise AssertionError("the emulator never rebooted web-0")


@pytest.fixture
def recovered(agent: Agent, pool: EmulatorControl, tmp_path: Path) -> tuple[Agent, EmulatorControl]:
    boot_file = tmp_path / "boot_id"
    pool.boot_id_file("web-0", str(boot_file))
    agent.config_text = _config()
    agent.extra_env["TEST_BOOT_ID_FILE"] = str(boot_file)
    assert agent.check().returncode == 0
    return agent, pool


def test_recovered_restores_after_the_reboot_while_the_event_lingers(
    recovered: tuple[Agent, EmulatorControl],
) -> None:
    agent, control = recovered
    event = control.schedule("Reboot", ["web-0"], maintenance_seconds=0.2, linger_seconds=600)
    assert agent.check().returncode == 0
    assert not _in_pool(control)
    before = _boot(control)
    control.start(event)
    _wait_for_new_boot(control, before)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert _in_pool(control), "the impact is over and the gate passed: back in rotation"
    assert [e["EventId"] for e in control.state()["events"]] == [event], "the event still lingers"
    status = agent.status()
    assert status["vm"]["drain_state"] == "in_rotation"
    assert [e["state"] for e in status["events"]] == ["recovered"]


def test_recovered_never_restores_before_the_impact(recovered: tuple[Agent, EmulatorControl]) -> None:
    agent, control = recovered
    event = control.schedule("Reboot", ["web-0"], maintenance_seconds=3600, linger_seconds=600)
    assert agent.check().returncode == 0
    control.start(event)
    for _ in range(3):
        assert agent.check().returncode == 0
        assert not _in_pool(control), "Started, but the VM has not rebooted: still out"
    control.remove(event)
    assert agent.check().returncode == 0
    assert _in_pool(control)


def test_recovered_waits_for_the_restore_gate(recovered: tuple[Agent, EmulatorControl]) -> None:
    agent, control = recovered
    agent.config_text = _config('\n[restore]\nhealth_command = ["false"]\nhealth_timeout = 3600\n')
    event = control.schedule("Reboot", ["web-0"], maintenance_seconds=0.2, linger_seconds=600)
    assert agent.check().returncode == 0
    before = _boot(control)
    control.start(event)
    _wait_for_new_boot(control, before)
    for _ in range(2):
        assert agent.check().returncode == 0
        assert not _in_pool(control), "rebooted, but the local health check fails: still out"
    agent.config_text = _config('\n[restore]\nhealth_command = ["true"]\n')
    assert agent.check().returncode == 0
    assert _in_pool(control)


def test_recovered_drains_again_on_a_second_impact(recovered: tuple[Agent, EmulatorControl]) -> None:
    agent, control = recovered
    event = control.schedule(
        "Reboot",
        ["web-0"],
        maintenance_seconds=0.2,
        linger_seconds=600,
        second_impact_after=1.5,
        second_impact_seconds=0.2,
    )
    assert agent.check().returncode == 0
    first = _boot(control)
    control.start(event)
    second = _wait_for_new_boot(control, first)
    assert agent.check().returncode == 0
    assert _in_pool(control)
    _wait_for_new_boot(control, second)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert not _in_pool(control), "a second reboot while the event is listed: out again at once"
    history = agent.history()
    assert any("second impact" in h["reason"] for h in history), history


def test_cleared_keeps_the_vm_out_while_the_event_lingers(
    agent: Agent, pool: EmulatorControl, tmp_path: Path
) -> None:
    boot_file = tmp_path / "boot_id"
    pool.boot_id_file("web-0", str(boot_file))
    agent.extra_env["TEST_BOOT_ID_FILE"] = str(boot_file)
    assert agent.check().returncode == 0
    event = pool.schedule("Reboot", ["web-0"], maintenance_seconds=0.2, linger_seconds=600)
    assert agent.check().returncode == 0
    before = _boot(pool)
    pool.start(event)
    _wait_for_new_boot(pool, before)
    assert agent.check().returncode == 0
    assert not _in_pool(pool)
    pool.remove(event)
    assert agent.check().returncode == 0
    assert _in_pool(pool)
