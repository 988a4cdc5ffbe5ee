"""The fleet as one system: the pools' floor across VMs that decide at the same moment (decided from
the pools and the intents on the peers' NICs, with the shipped config and nothing the operator must
create), forced drains, breaches made visible, approvals that wait for every listed VM (in any pool,
any resource group), staggered approvers, and the intent of a VM that died. Every VM runs the real CLI
in its own process against one emulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from drainer.decide.intents import TAG, Intent, encode, key
from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.agent_entry import CRASH_EXIT
from tests.conftest import DEFAULT_CONFIG, log_records
from tests.fleet import APPROVING, VMS, fleet_agents, fleet_config, lowest_in_service, together


def intent_on(control: EmulatorControl, nic: str) -> str | None:
    tags: dict[str, str] = control.nic(nic).get("tags") or {}
    return next((v for k, v in tags.items() if k.lower() == TAG), None)


def set_tag(emulator: RunningEmulator, nic: str, name: str, value: str) -> None:
    """Someone (an operator, a forger with Tag Contributor) sets a tag on a NIC."""
    arm = emulator.model.arm
    with arm.lock:
        arm.nics[nic.lower()].setdefault("tags", {})[name] = value


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
    # Five VMs, each with its own Reboot at the same moment, all deciding in the same second; every
    # NIC write takes 0.3 s, so all of them read the pool before any write lands (before issue 19,
    # without the optional lease, every one of them passed the floor: the pool went to 0). No
    # resource of the operator's: the shipped way.
    control.arm_settings(put_delay=0.3)
    agents = fleet_agents(
        emulator, tmp_path, VMS, fleet_config(min_in_service=min_in_service, max_unavailable=max_unavailable)
    )
    for name in VMS:
        control.schedule("Reboot", [name], not_before_in=900)
    states: dict[str, str] = {}
    for _ in range(6):  # cron: a run a minute, all VMs at once; a conflict may hold some for a run
        results = together(list(agents.values()), "check", TEST_SPREAD="1")
        assert all(r.returncode == 0 for r in results), [r.stderr[-400:] for r in results]
        assert lowest_in_service(control, five) >= min_in_service
        states = {n: a.status()["vm"]["drain_state"] for n, a in agents.items()}
        if sorted(states.values()).count("drained") == drained:
            break
    assert sorted(states.values()).count("drained") == drained, states
    assert lowest_in_service(control, five) == len(VMS) - drained >= min_in_service
    # The held ones keep serving, say so, and say why; none of them left an intent behind.
    for name, state in states.items():
        if state != "drained":
            vm = agents[name].status()["vm"]
            assert vm["in_rotation"] is True
            assert "min_in_service=" in vm["held"] or "max_unavailable=" in vm["held"], vm["held"]
            assert intent_on(control, f"{name}-nic") is None
    # Running everyone again changes nothing: the pool itself says who is out.
    assert all(r.returncode == 0 for r in together(list(agents.values()), "check"))
    assert lowest_in_service(control, five) == len(VMS) - drained


def test_one_after_the_other_each_sees_the_others_out(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    agents = fleet_agents(emulator, tmp_path, VMS, fleet_config(min_in_service=2))
    for name in VMS:
        control.schedule("Reboot", [name], not_before_in=900)
    for agent in agents.values():
        assert agent.check().returncode == 0
    assert lowest_in_service(control, five) == 2


def test_near_not_before_the_platform_forces_the_drain_and_the_breach_is_visible(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
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
    breach = agents[held[-1]].status()["floor_breach"]["what"][0]
    assert "below the floor after this drain (forced" in breach
    assert "lb-web/web-pool: 0 in service, min_in_service=1" in breach
    assert lowest_in_service(control, five) == 0


def test_a_breach_nobody_forced_is_reported_too(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    # web-0's drain is granted (four others stay, floor 2); between the grant and the drain (its
    # pre-drain hook stands for the moment) an operator takes three others out of the pool. After
    # its drain web-0 reads the pool again: one member in service, below the floor: said.
    hooks = tmp_path / "hooks"
    (hooks / "pre-drain").mkdir(parents=True)
    hooks.chmod(0o755)
    leave = [{"vm": n, "lb": "lb-web", "pool": "web-pool"} for n in ("web-1", "web-2", "web-3")]
    hook = hooks / "pre-drain" / "10-operator"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, urllib.request\n"
        f"for body in {leave!r}:\n"
        f"    urllib.request.urlopen(urllib.request.Request('{emulator.url}/_emulator/arm/leave',\n"
        "        data=json.dumps(body).encode(), method='POST',\n"
        "        headers={'Content-Type': 'application/json'})).read()\n"
    )
    hook.chmod(0o755)
    config = fleet_config(min_in_service=2) + f'\n[hooks]\ndir = "{hooks}"\n'
    agent = fleet_agents(emulator, tmp_path, ["web-0"], config)["web-0"]
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert lowest_in_service(control, five) == 1
    said = [r for r in log_records(done.stderr) if r["event"] == "a pool is below its floor after this drain"]
    assert said and said[0]["pools"] == ["lb-web/web-pool: 1 in service, min_in_service=2"]
    breach = agent.status()["floor_breach"]["what"]
    assert breach == ["below the floor after this drain: lb-web/web-pool: 1 in service, min_in_service=2"]


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


def test_the_intent_of_a_vm_that_died_stops_counting_claim_seconds_after_it_was_first_seen(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    agents = fleet_agents(emulator, tmp_path, VMS[:2], fleet_config(min_in_service=4))
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    crashed = agents["web-0"].check(TEST_CRASH_AT="intent-announced")  # announces, then dies
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert intent_on(control, "web-0-nic") is not None
    assert control.nic_pools("web-0-nic") != []  # still in the pool: it counts as leaving it
    assert agents["web-1"].check().returncode == 0
    assert "min_in_service=4 (1 leaving now)" in agents["web-1"].status()["vm"]["held"]
    assert agents["web-1"].status()["vm"]["in_rotation"] is True
    # claim_seconds (900) after web-1 first saw it, web-0's intent no longer counts: web-0 is a
    # member of the pool like any other (the pool is the truth), and web-1 may leave.
    assert agents["web-1"].check(TEST_CLOCK_OFFSET="1000").returncode == 0
    assert agents["web-1"].status()["vm"]["drain_state"] == "drained"
    assert lowest_in_service(control, five) == 4


def test_a_forged_intent_with_a_far_expiry_blocks_no_longer_than_claim_seconds(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    pool = five
    forged = encode(Intent("f0f0f0f0", 4_102_444_800, frozenset({key(pool)})))  # "until 2100"
    for name in ("web-2", "web-3"):
        set_tag(emulator, f"{name}-nic", TAG, forged)
    agent = fleet_agents(emulator, tmp_path, ["web-0"], fleet_config(min_in_service=3))["web-0"]
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    assert agent.check().returncode == 0
    assert "min_in_service=3" in agent.status()["vm"]["held"]
    assert agent.check(TEST_CLOCK_OFFSET="600").returncode == 0  # still within claim_seconds
    assert agent.status()["vm"]["drain_state"] == "draining"
    assert agent.check(TEST_CLOCK_OFFSET="1000").returncode == 0  # first seen over 900 s ago
    assert agent.status()["vm"]["drain_state"] == "drained"


def test_a_restore_releases_the_intent_even_when_nothing_else_changed(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    agents = fleet_agents(emulator, tmp_path, VMS[:2], fleet_config(min_in_service=1))
    first = control.schedule("Reboot", ["web-0"], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0
    assert control.nic_pools("web-0-nic") == []
    assert intent_on(control, "web-0-nic") is not None  # stays while out
    control.remove(first)
    assert agents["web-0"].check().returncode == 0
    assert control.nic_pools("web-0-nic") != []
    assert intent_on(control, "web-0-nic") is None
    # web-1 announces and dies before its drain; its event goes away: the restore of a VM that never
    # left puts back nothing, and still removes the intent.
    second = control.schedule("Reboot", ["web-1"], not_before_in=3600)
    crashed = agents["web-1"].check(TEST_CRASH_AT="intent-announced")
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert intent_on(control, "web-1-nic") is not None
    control.remove(second)
    done = agents["web-1"].check()
    assert done.returncode == 0, done.stderr
    assert agents["web-1"].status()["vm"]["drain_state"] == "in_rotation"
    assert intent_on(control, "web-1-nic") is None


def test_a_held_drain_runs_no_hook_and_status_says_in_rotation_with_the_reason(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    hooks = tmp_path / "hooks"
    (hooks / "pre-drain").mkdir(parents=True)
    hooks.chmod(0o755)
    ran = tmp_path / "pre-drain-ran"
    hook = hooks / "pre-drain" / "10-mark"
    hook.write_text(f'#!/bin/sh\necho "$DRAINER_PHASE" >> "{ran}"\n')
    hook.chmod(0o755)
    config = fleet_config(min_in_service=4) + f'\n[hooks]\ndir = "{hooks}"\n'
    agents = fleet_agents(emulator, tmp_path, VMS[:2], config)
    for name in VMS[:2]:
        control.schedule("Reboot", [name], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0  # 4 others stay: granted
    assert ran.read_text() == "pre-drain\n"
    assert agents["web-1"].check().returncode == 0  # 3 others would stay: held
    assert ran.read_text() == "pre-drain\n"  # no hook ran for the held drain
    status = agents["web-1"].status()["vm"]
    assert status["drain_state"] == "draining"
    assert status["in_rotation"] is True
    assert status["rotation"].startswith("draining, held: lb-web/web-pool: 3 other member(s)")
    text = agents["web-1"].run("status").stdout
    assert "VM web-1: IN rotation (draining, held: lb-web/web-pool: 3 other member(s)" in text
    assert "min_in_service=4" in text
    # A drain that fails (the NIC write refused) is in rotation too, with the error.
    control.fault(match="/networkInterfaces/web-1-nic", status=403, count=1000, method="PUT")
    agents["web-1"].config_text = config.replace("min_in_service = 4", "min_in_service = 0")
    assert agents["web-1"].check().returncode == 1
    status = agents["web-1"].status()["vm"]
    assert status["in_rotation"] is True
    assert status["rotation"].startswith("draining, failing: write NIC web-1-nic failed: HTTP 403")


def test_admin_state_finds_the_intent_of_an_ip_member_on_its_nic(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path
) -> None:
    # IP-based pool (method admin-state): members are addresses; their VMs' intents are on their
    # NICs, found by address (and virtual network) among the resource group's NICs.
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for name in ("web-0", "web-1", "web-2"):
        control.add_ip_member("lb-ip", "ip-pool", name)
    config = fleet_config(min_in_service=2, drain='method = "admin-state"\n')
    agents = fleet_agents(emulator, tmp_path, ["web-0", "web-1"], config)
    for name in ("web-0", "web-1"):
        control.schedule("Reboot", [name], not_before_in=3600)
    crashed = agents["web-0"].check(TEST_CRASH_AT="intent-announced")
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert intent_on(control, "web-0-nic") is not None
    assert agents["web-1"].check().returncode == 0  # web-2 alone would stay: web-0 is leaving
    held = agents["web-1"].status()["vm"]["held"]
    assert "lb-ip/ip-pool: 1 other member(s) would stay in service, min_in_service=2 (1 leaving now)" in held
    assert intent_on(control, "web-1-nic") is None  # withdrawn
    assert agents["web-0"].check().returncode == 0  # its retry: web-1 withdrew, web-0 goes
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    assert agents["web-1"].check().returncode == 0  # web-0 is Down now: the pool alone holds web-1
    assert "1 other member(s) would stay in service" in agents["web-1"].status()["vm"]["held"]
    ((pool, members),) = control.membership().items()
    assert sorted(m.endswith("(Down)") for m in members) == [False, False, True], (pool, members)


def test_a_pre_drain_hook_that_aborts_the_drain_withdraws_the_intent(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    hooks = tmp_path / "hooks"
    (hooks / "pre-drain").mkdir(parents=True)
    hooks.chmod(0o755)
    hook = hooks / "pre-drain" / "10-refuse"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    config = fleet_config(min_in_service=1) + f'\n[hooks]\ndir = "{hooks}"\n'
    agent = fleet_agents(emulator, tmp_path, ["web-0"], config)["web-0"]
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    assert agent.check().returncode == 1
    assert control.nic_pools("web-0-nic") != []
    assert intent_on(control, "web-0-nic") is None  # it stays: no peer may count it as leaving
    vm = agent.status()["vm"]
    assert vm["in_rotation"] is True
    assert vm["rotation"].startswith("draining, failing: drain failed: pre-drain hook failed")


def test_floors_per_pool(emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path) -> None:
    # web-0..2 in lb-a/pool-a and lb-b/pool-b: pool-a keeps 2 in service, any other pool 0.
    for lb, pool in (("lb-a", "pool-a"), ("lb-b", "pool-b")):
        control.add_load_balancer(lb, pools=[pool])
        for name in ("web-0", "web-1", "web-2"):
            control.join(name, lb, pool)
    control.reset_stats()
    config = fleet_config(min_in_service='{ "pool-a" = 2, "*" = 0 }')
    agents = fleet_agents(emulator, tmp_path, ["web-0", "web-1"], config)
    for name in ("web-0", "web-1"):
        control.schedule("Reboot", [name], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    assert agents["web-1"].check().returncode == 0
    assert (
        "lb-a/pool-a: 1 other member(s) would stay in service, min_in_service=2"
        in (agents["web-1"].status()["vm"]["held"])
    )
    assert control.nic_pools("web-1-nic") != []


def test_throttled_arm_is_waited_out_with_retry_after(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
    # A write bucket of one token refilled every two seconds: the drain's second write (the NIC
    # write after the intent) is throttled (429 with Retry-After) and goes through once the token
    # is back.
    control.throttle(enabled=True, arm_write=[1, 0.5])
    agents = fleet_agents(emulator, tmp_path, ["web-0"], fleet_config(min_in_service=1))
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agents["web-0"].check()
    assert done.returncode == 0, done.stderr
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    stats = control.stats()["principals"]["web-0"]
    assert stats["throttled"] >= 1
    throttled = [r for r in control.requests() if r["status"] == 429]
    assert throttled and all(r["method"] == "PUT" for r in throttled)


def test_fleet_shows_every_vm_of_the_pool_in_or_out_with_its_intent(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str
) -> None:
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
    assert out["intent"]["forced"] is False
    assert all(members[n]["in_rotation"] and members[n]["intent"] is None for n in VMS if n != "web-1")
    # Read-only: no ARM write, and the text form names the same.
    writes = len(control.arm_writes())
    text = agents["web-0"].run("fleet")
    assert text.returncode == 0, text.stderr
    assert "4 of 5 in service" in text.stdout
    assert "web-1" in text.stdout
    assert "OUT" in text.stdout
    assert "leaving: intent until" in text.stdout
    assert len(control.arm_writes()) == writes
