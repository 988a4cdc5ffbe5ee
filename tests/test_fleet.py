"""The fleet as one system: the pool's floor across VMs that decide at the same moment, forced drains,
approvals that wait for every listed VM (in any pool, any resource group), staggered approvers, and
claims of a VM that died. Every VM runs the real CLI in its own process against one emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import DEFAULT_CONFIG, log_records
from tests.fleet import APPROVING, VMS, fleet_agents, fleet_config, lowest_in_service, together


@pytest.mark.parametrize(("min_in_service", "max_unavailable", "drained"), [(1, 0, 4), (3, 0, 2), (1, 1, 1)])
def test_the_race_never_takes_the_pool_below_its_floor(  # noqa: PLR0917 - fixtures, parameters
    emulator: RunningEmulator,
    control: EmulatorControl,
    tmp_path: Path,
    five: str,
    min_in_service: int,
    max_unavailable: int,
    drained: int,
) -> None:
    # Five VMs, each with its own Reboot at the same moment, all deciding in the same second.
    lease = control.add_asg("drainer-lease")
    agents = fleet_agents(
        emulator,
        tmp_path,
        VMS,
        fleet_config(min_in_service=min_in_service, max_unavailable=max_unavailable),
    )
    for name in VMS:
        control.schedule("Reboot", [name], not_before_in=900)
    results = together(list(agents.values()), "check")
    assert all(r.returncode == 0 for r in results), [r.stderr[-400:] for r in results]
    states = {n: a.status()["vm"]["drain_state"] for n, a in agents.items()}
    assert sorted(states.values()).count("drained") == drained, states
    assert lowest_in_service(control, five) == len(VMS) - drained >= min_in_service
    # The held ones keep serving and say why.
    for name, state in states.items():
        if state != "drained":
            assert "no slot" in agents[name].status()["vm"]["held"]
    # Running everyone again changes nothing: the slots are still taken.
    assert all(r.returncode == 0 for r in together(list(agents.values()), "check"))
    assert lowest_in_service(control, five) >= min_in_service


def test_without_a_lease_the_floor_is_only_checked_alone(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    # Sequential runs: each sees the others' drains in the pool, so the floor holds even without a
    # lease (only VMs deciding in the same second can pass it together: README, fleet model).
    agents = fleet_agents(emulator, tmp_path, VMS, fleet_config(min_in_service=2))
    for name in VMS:
        control.schedule("Reboot", [name], not_before_in=900)
    for agent in agents.values():
        assert agent.check().returncode == 0
    assert lowest_in_service(control, five) == 2


def test_near_not_before_the_platform_forces_the_drain_and_the_breach_is_visible(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    lease = control.add_asg("drainer-lease")
    agents = fleet_agents(emulator, tmp_path, VMS, fleet_config(min_in_service=1, max_unavailable=1))
    for name in VMS:
        control.schedule("Reboot", [name], not_before_in=900)
    for agent in agents.values():
        assert agent.check().returncode == 0
    held = [n for n, a in agents.items() if a.status()["vm"]["drain_state"] != "drained"]
    assert len(held) == 4
    # 14 minutes later (NotBefore within force_before_seconds): the held VMs drain anyway.
    for name in held:
        done = agents[name].check(TEST_CLOCK_OFFSET="840")
        assert done.returncode == 0, done.stderr
        assert agents[name].status()["vm"]["drain_state"] == "drained"
        assert any("below the pool's floor" in r["event"] for r in log_records(done.stderr))
        assert "below the floor, forced" in agents[name].status()["floor_breach"]["what"][0]
    assert lowest_in_service(control, five) == 0


def test_a_dead_first_approver_costs_one_slot(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    config = fleet_config(min_in_service=0).replace(DEFAULT_CONFIG, APPROVING)
    agents = fleet_agents(emulator, tmp_path, VMS[:3], config)
    event_id = control.schedule("Reboot", VMS[:3], not_before_in=900)
    # web-0 drains and dies before anyone else is out: it never approves.
    assert agents["web-0"].check().returncode == 0
    for name in ("web-1", "web-2"):
        assert agents[name].check().returncode == 0
    assert control.state()["approvals"] == []
    assert agents["web-1"].status()["events"][0]["approval"].startswith("waiting: web-0 approves first")
    # One slot (20 s) later, web-1 approves; web-2's turn has not come.
    assert agents["web-2"].check(TEST_CLOCK_OFFSET="25").returncode == 0
    assert agents["web-1"].check(TEST_CLOCK_OFFSET="25").returncode == 0
    approvals = control.state()["approvals"]
    assert [(a["event_id"], a["vm"], a["in_pool"]) for a in approvals] == [(event_id, "web-1", [])]


def test_listed_vms_in_two_pools_and_another_resource_group(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path
) -> None:
    # web-3's NIC and its load balancer live in another resource group; web-0 is in lb-web. They
    # share no pool, and web-0's resource group holds no NIC of web-3: the approver must still wait.
    control.add_vm("web-3", nic_resource_group="rg-net")
    control.add_load_balancer("lb-web", pools=["web-pool"])
    control.join("web-0", "lb-web", "web-pool")
    control.add_load_balancer("lb-api", pools=["api-pool"], resource_group="rg-net")
    control.join("web-3", "lb-api", "api-pool")
    config = APPROVING + "\n[drain]\nmin_in_service = 0\n"
    agents = fleet_agents(emulator, tmp_path, ["web-0", "web-3"], config)
    nic = control.nic("web-3-nic")["id"]
    agents["web-3"].config_text = config.replace(
        "min_in_service = 0", f'min_in_service = 0\nnics = ["{nic}"]'
    )
    event_id = control.schedule("Reboot", ["web-0", "web-3"], not_before_in=900)
    assert agents["web-0"].check().returncode == 0
    assert control.state()["approvals"] == []
    assert agents["web-0"].status()["events"][0]["approval"] == "waiting: web-3 still in a pool"
    done = agents["web-3"].check()
    assert done.returncode == 0, done.stderr
    assert control.nic_pools("web-3-nic") == []
    assert agents["web-0"].check().returncode == 0
    approvals = control.state()["approvals"]
    assert [(a["event_id"], a["vm"], a["in_pool"]) for a in approvals] == [(event_id, "web-0", [])]
    # Back in when it is over, in the other resource group too.
    control.remove(event_id)
    for agent in agents.values():
        assert agent.check().returncode == 0
    assert control.nic_pools("web-3-nic") != []


def test_the_claim_of_a_vm_that_died_expires(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    lease = control.add_asg("drainer-lease")
    agents = fleet_agents(
        emulator, tmp_path, VMS[:2], fleet_config(min_in_service=0, max_unavailable=1)
    )
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0  # takes the one slot, drains, then dies
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    assert agents["web-1"].check().returncode == 0
    assert "max_unavailable=1" in agents["web-1"].status()["vm"]["held"]
    # claim_seconds (900) later, web-0 never renewed it: the slot is free again.
    assert agents["web-1"].check(TEST_CLOCK_OFFSET="1000").returncode == 0
    assert agents["web-1"].status()["vm"]["drain_state"] == "drained"


def test_a_restore_releases_the_slot(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    lease = control.add_asg("drainer-lease")
    agents = fleet_agents(
        emulator, tmp_path, VMS[:2], fleet_config(min_in_service=0, max_unavailable=1)
    )
    first = control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0
    assert agents["web-1"].check().returncode == 0
    assert agents["web-1"].status()["vm"]["drain_state"] != "drained"
    control.remove(first)
    assert agents["web-0"].check().returncode == 0  # back in: its claim is gone from the lease
    tags = emulator.model.arm.get_asg("drainer-lease")["tags"]
    assert not [t for t in tags if t.startswith("drainer:claim:web-0")]
    assert agents["web-1"].check().returncode == 0
    assert agents["web-1"].status()["vm"]["drain_state"] == "drained"


def test_throttled_arm_is_waited_out_with_retry_after(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    # A write bucket of one token refilled every two seconds: the drain's second write is throttled
    # (429 with Retry-After) and goes through once the token is back.
    control.throttle(enabled=True, arm_write=[1, 0.5])
    agents = fleet_agents(
        emulator, tmp_path, ["web-0"], fleet_config(control.add_asg("drainer-lease"), min_in_service=0)
    )
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agents["web-0"].check()
    assert done.returncode == 0, done.stderr
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    stats = control.stats()["principals"]["web-0"]
    assert stats["throttled"] >= 1
    throttled = [r for r in control.requests() if r["status"] == 429]
    assert throttled and all(r["method"] == "PUT" for r in throttled)


def test_fleet_shows_every_vm_of_the_pool_in_or_out_with_its_claim(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    lease = control.add_asg("drainer-lease")
    agents = fleet_agents(emulator, tmp_path, VMS[:2], fleet_config(min_in_service=1))
    event_id = control.schedule("Reboot", ["web-1"], not_before_in=900)
    assert agents["web-1"].check().returncode == 0
    done = agents["web-0"].run("fleet", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    (pool,) = view["pools"]
    assert pool["pool"] == five.lower()
    assert pool["in_service"] == 4
    members = {m["vm"]: m for m in pool["members"]}
    assert sorted(members) == VMS
    out = members["web-1"]
    assert not out["in_rotation"]
    assert event_id in out["record"]
    assert out["claim"]["vm"] == "web-1"
    assert all(members[n]["in_rotation"] and members[n]["claim"] is None for n in VMS if n != "web-1")
    # Read-only: no ARM write, and the text form names the same.
    writes = len(control.arm_writes())
    text = agents["web-0"].run("fleet")
    assert text.returncode == 0, text.stderr
    assert "4 of 5 in service" in text.stdout
    assert "web-1" in text.stdout
    assert "OUT" in text.stdout
    assert len(control.arm_writes()) == writes
