"""Chaos: random kills, random loss or corruption of the state directory, and transient ARM faults,
during drains and restores, over generated runs of the real CLI against the emulator.

Every run must end with exactly the original pools (minus what the operator removed), no drainer
record left on the NIC, and no other VM's NIC ever written. The seed and the number of scenarios are
fixed in CI; ``CHAOS_SCENARIOS=200`` (and ``CHAOS_SEED``) runs a longer search by hand.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, ENTRY, Agent

SCENARIOS = int(os.environ.get("CHAOS_SCENARIOS", "4"))
SEED = int(os.environ.get("CHAOS_SEED", "20261130"))
STEPS = 12
CONFIG = DEFAULT_CONFIG + "\n[drain]\ngone_after_reads = 1000\ngone_after_seconds = 0\n"
CHECKPOINTS = [
    "decided",
    "saved",
    "before-drain",
    "nic-written",
    "after-drain",
    "recorded-drain",
    "before-restore",
    "nic-restored",
    "after-restore",
    "before-reconcile",
    "after-reconcile",
]
FAULTS: list[dict[str, Any]] = [
    {"match": "/networkInterfaces/web-0-nic", "status": 500, "method": "PUT"},
    {"match": "/networkInterfaces/web-0-nic", "status": 409, "method": "PUT"},
    {"match": "/networkInterfaces/web-0-nic", "status": 404, "method": "GET"},
    {"match": "/loadBalancers/lb-web", "status": 404, "method": "GET"},
    {"match": "/networkInterfaces", "status": 503, "method": "GET"},
    {"match": "/metadata/scheduledevents", "status": 500, "method": "GET"},
]


def _pools(control: EmulatorControl, nic: str) -> list[str]:
    return control.nic_pools(nic)


def _records(control: EmulatorControl, nic: str) -> list[str]:
    return sorted(k for k in (control.nic(nic).get("tags") or {}) if k.lower().startswith("drainer"))


def _kill_at_random(agent: Agent, rng: random.Random) -> None:
    """Start a check and SIGKILL it at a random moment."""
    process = subprocess.Popen(
        [sys.executable, str(ENTRY), "check"],
        env=agent.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout=rng.uniform(0.2, 2.5))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _damage_state(agent: Agent, rng: random.Random) -> str:
    if not agent.state_dir.exists():
        return "no state"
    how = rng.choice(["delete", "empty", "corrupt"])
    if how == "delete":
        shutil.rmtree(agent.state_dir)
    else:
        for extra in agent.state_dir.glob("state.db-*"):
            extra.unlink()
        db = agent.state_dir / "state.db"
        db.write_bytes(b"" if how == "empty" else os.urandom(rng.randint(1, 9000)))
    return how


@pytest.mark.parametrize("scenario", range(SCENARIOS))
def test_chaos_never_loses_the_vm_nor_touches_another(
    agent: Agent, control: EmulatorControl, scenario: int
) -> None:
    rng = random.Random(SEED * 1000 + scenario)
    agent.config_text = CONFIG
    control.add_load_balancer("lb-web", pools=["web-pool", "api-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.join(vm, "lb-web", "web-pool")
        control.join(vm, "lb-web", "api-pool")
    expected = _pools(control, "web-0-nic")
    events: list[str] = []
    trace: list[str] = []
    for _ in range(STEPS):
        move = rng.choice(
            ["schedule", "remove", "check", "check", "crash", "kill", "damage", "fault", "operator"]
        )
        if move == "schedule" and len(events) < 2:
            events.append(control.schedule(rng.choice(["Reboot", "Redeploy", "Freeze"]), ["web-0"]))
        elif move == "remove" and events:
            control.remove(events.pop(rng.randrange(len(events))))
        elif move == "crash":
            point = rng.choice(CHECKPOINTS)
            agent.check(TEST_CRASH_AT=point)
            move = f"crash@{point}"
        elif move == "kill":
            _kill_at_random(agent, rng)
        elif move == "damage":
            move = f"damage:{_damage_state(agent, rng)}"
        elif move == "fault":
            fault = dict(rng.choice(FAULTS), count=rng.randint(1, 3))
            control.fault(**fault)
            agent.check()
            move = f"fault:{fault['status']}@{fault['match']}"
        elif move == "operator" and not events and _pools(control, "web-0-nic"):
            # An operator takes web-0 out of api-pool while no maintenance holds it.
            control.leave("web-0", "lb-web", "api-pool")
            expected = [p for p in expected if not p.endswith("/api-pool")]
        elif move == "operator":
            agent.check()
            move = "check"
        else:
            agent.check()
        trace.append(move)
    # The maintenance ends; the faults stop. A few ordinary runs must converge.
    for event_id in events:
        control.remove(event_id)
    control.clear_faults()
    for _ in range(4):
        done = agent.check()
        assert "Traceback" not in done.stderr, (trace, done.stderr)
        if done.returncode == 0 and _pools(control, "web-0-nic") == expected:
            break
    assert _pools(control, "web-0-nic") == expected, " ".join(trace)
    assert _records(control, "web-0-nic") == [], trace
    written = {w["name"] for w in control.arm_writes()}
    assert written <= {"web-0-nic"}, (trace, written)
    assert agent.status()["vm"]["in_rotation"] is True, trace
