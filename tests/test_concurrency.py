"""Two drainers on one VM: checks started together, and the daemon next to a cron one-shot. Exactly
one acts each time (one NIC write per drain); the state is never corrupt."""

from __future__ import annotations

import subprocess
import sys
import time

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, ENTRY, Agent
from tests.test_daemon import Daemon, wait_until

# Without the fleet's floor (its intent is one more NIC write per drain, tested in tests/test_fleet.py):
# every write counted here is the drain's or the restore's own.
NO_FLOOR = DEFAULT_CONFIG + "\n[drain]\nmin_in_service = 0\n"


def test_checks_started_together_act_once(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = NO_FLOOR
    control = pool
    assert agent.check().returncode == 0
    for round_ in range(3):
        event_id = control.schedule("Reboot", ["web-0"])
        env = agent.env()
        runs = [
            subprocess.Popen(
                [sys.executable, str(ENTRY), "check"], env=env, stderr=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        codes = sorted(p.wait(timeout=60) for p in runs)
        for p in runs:
            assert p.stderr is not None
            err = p.stderr.read()
            p.stderr.close()
            assert "Traceback" not in err
        assert set(codes) <= {0, 3}  # 3: another run held the lock
        assert codes.count(0) >= 1
        assert len(control.arm_writes()) == 2 * round_ + 1  # one write for this drain
        assert agent.status()["vm"]["drain_state"] == "drained"
        control.remove(event_id)
        assert agent.check().returncode == 0
        assert len(control.arm_writes()) == 2 * round_ + 2
        assert agent.status()["vm"]["in_rotation"] is True


def test_daemon_and_a_cron_oneshot_side_by_side(agent: Agent, pool: EmulatorControl) -> None:
    control = pool
    agent.config_text = NO_FLOOR + "\n[daemon]\npoll_interval = 0.2\n"
    daemon = Daemon(agent)
    daemon.start()
    try:
        event_id = control.schedule("Reboot", ["web-0"])
        deadline = time.monotonic() + 20
        codes = []
        while time.monotonic() < deadline and agent.status()["vm"]["drain_state"] != "drained":
            codes.append(agent.check().returncode)  # cron's one-shot, racing the daemon
        assert set(codes) <= {0, 3}
        assert len(control.arm_writes()) == 1
        control.remove(event_id)
        wait_until(lambda: agent.status()["vm"]["in_rotation"] is True, what="the restore")
        assert agent.check().returncode in (0, 3)
        assert len(control.arm_writes()) == 2
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
