"""Adversarial tests of the fleet's floor, forced drains, intents and early approval (review attack4;
adapted in issue 19: the floor is decided from the pools and the intents on the VMs' NICs).

Every VM runs the real CLI against one emulator (real azure-mgmt-network client, no mocks)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import DEFAULT_CONFIG, log_records
from tests.fleet import APPROVING, VMS, fleet_agents, fleet_config, lowest_in_service
from tests.test_daemon import Daemon
from tests.zygote import Zygote


def test_a_held_drain_is_not_carried_out_by_the_next_reconcile(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # Production back-off (a held drain is retried every retry_max_seconds / 4): between two retries
    # of a held drain, the next run has no action, so a reconcile is due ("never reconciled"). The
    # reconcile of a VM "decided out" (DRAINING includes held) takes it out with action None, which
    # hold_floor treats as forced: no floor, no breach shown.
    base = DEFAULT_CONFIG.replace("retry_max_seconds = 0", "retry_max_seconds = 3600")
    agents = fleet_agents(
        emulator,
        tmp_path,
        VMS[:2],
        fleet_config(min_in_service=1, max_unavailable=1, base=base),
        zygote,
    )
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    assert agents["web-1"].check().returncode == 0
    assert "max_unavailable=1" in agents["web-1"].status()["vm"]["held"]
    assert control.nic_pools("web-1-nic") != []
    # The next run, seconds later: nothing forces the drain, the slot is still taken.
    done = agents["web-1"].check()
    assert done.returncode == 0, done.stderr
    events = [r["event"] for r in log_records(done.stderr)]
    assert control.nic_pools("web-1-nic") != [], f"a held drain went ahead through a reconcile: {events}"
    assert lowest_in_service(control, five) >= len(VMS) - 1


def test_a_listed_vm_seen_out_once_is_read_again_before_the_approval(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # The approver remembers which listed VMs it has seen out ("out" in the peer_check meta) and
    # never reads them again. A listed VM that is put back into its pool meanwhile (an operator, a
    # deployment pipeline re-applying the pool) is then in service when the approval starts the
    # maintenance for every listed VM.
    config = fleet_config(min_in_service=0, base=APPROVING)
    agents = fleet_agents(emulator, tmp_path, VMS[:3], config, zygote)
    control.schedule("Reboot", VMS[:3], not_before_in=900)
    assert agents["web-1"].check().returncode == 0
    assert control.nic_pools("web-1-nic") == []
    assert agents["web-0"].check().returncode == 0  # waits for web-2; remembers web-1 out
    assert control.state()["approvals"] == []
    assert "web-2 still in a pool" in agents["web-0"].status()["events"][0]["approval"]
    control.join("web-1", "lb-web", "web-pool")  # web-1 serves again
    assert agents["web-2"].check().returncode == 0
    assert agents["web-0"].check().returncode == 0
    approvals = control.state()["approvals"]
    assert [a["in_pool"] for a in approvals] in ([], [[]]), [(a["vm"], a["in_pool"]) for a in approvals]


def test_a_listed_vm_in_an_ip_based_pool_of_another_load_balancer_blocks_the_approval(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # web-0 (nic method) is in lb-web only. web-1 is in lb-web and, by address, in an IP-based pool
    # of lb-api. web-0 only checks IP-based pools from its own ledger, so it approves while web-1
    # still serves through lb-api.
    control.add_load_balancer("lb-web", pools=["web-pool"])
    control.join("web-0", "lb-web", "web-pool")
    control.join("web-1", "lb-web", "web-pool")
    control.add_load_balancer("lb-api", pools=[], ip_pools=["api-pool"])
    control.add_ip_member("lb-api", "api-pool", "web-1")
    agents = fleet_agents(
        emulator, tmp_path, ["web-0"], fleet_config(min_in_service=0, base=APPROVING), zygote
    )
    control.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    control.leave("web-1", "lb-web", "web-pool")  # out of the NIC pool, still in the IP pool
    assert agents["web-0"].check().returncode == 0
    approvals = control.state()["approvals"]
    assert [a["in_pool"] for a in approvals] in ([], [[]]), [(a["vm"], a["in_pool"]) for a in approvals]


def _appgw_refs(control: EmulatorControl, nic: str) -> list[str]:
    body = control.nic(nic)
    return [
        ref["id"]
        for config in body["properties"]["ipConfigurations"]
        for ref in config["properties"].get("applicationGatewayBackendAddressPools") or []
    ]


def test_the_floor_holds_in_application_gateway_pools(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # [drain] application_gateways = true: the nic method takes the VM out of Application Gateway
    # pools too, but the floor (min_in_service, max_unavailable, intents) only counts load-balancer
    # pools: two VMs empty an Application Gateway pool whose floor is one member, one after the other.
    control.add_app_gateway("agw", ["agw-pool"])
    rg = control.nic("web-0-nic")["id"].split("/providers/")[0]
    agw_pool = f"{rg}/providers/Microsoft.Network/applicationGateways/agw/backendAddressPools/agw-pool"
    for name in VMS[:2]:
        control.join_app_gateway(name, agw_pool)
    config = fleet_config(min_in_service=1, max_unavailable=1, drain="application_gateways = true\n")
    agents = fleet_agents(emulator, tmp_path, VMS[:2], config, zygote)
    for name in VMS[:2]:
        control.schedule("Reboot", [name], not_before_in=3600)
    for name in VMS[:2]:
        assert agents[name].check().returncode == 0
    left = [n for n in VMS[:2] if _appgw_refs(control, f"{n}-nic")]
    states = {n: a.status()["vm"] for n, a in agents.items()}
    assert len(left) >= 1, {n: (s["drain_state"], s["held"]) for n, s in states.items()}


def test_a_vm_out_longer_than_claim_seconds_still_counts_for_max_unavailable(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # Before issue 19 a claim had to be renewed while the VM was out (a lapsed one freed its slot).
    # Now an intent lives claim_seconds at most, and a VM out of the pool counts by drainer's record
    # on its NIC for as long as it is out: web-0, out for 8 minutes with intents of 300 s, still
    # takes the only slot.
    config = fleet_config(min_in_service=1, max_unavailable=1).replace(
        "claim_seconds = 900", "claim_seconds = 300"
    )
    agents = fleet_agents(emulator, tmp_path, VMS[:2], config, zygote)
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    for minute in range(8):  # cron: one run a minute, web-0 out the whole time
        done = agents["web-0"].check(TEST_CLOCK_OFFSET=str(60 * minute))
        assert done.returncode == 0, done.stderr
        assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    assert agents["web-1"].check(TEST_CLOCK_OFFSET=str(60 * 7)).returncode == 0
    assert control.nic_pools("web-0-nic") == []
    assert control.nic_pools("web-1-nic") != [], "two VMs out with max_unavailable = 1"
    assert "max_unavailable=1" in agents["web-1"].status()["vm"]["held"]


def test_idle_runs_after_a_fleet_cycle_make_no_arm_call_and_import_no_sdk(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # A whole cycle with the floor and approvals on (intent, drain, approval, restore, release),
    # then idle runs: no Azure SDK import, no ARM request.
    agents = fleet_agents(
        emulator,
        tmp_path,
        ["web-0"],
        fleet_config(min_in_service=1, max_unavailable=1, base=APPROVING),
        zygote,
    )
    event_id = control.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agents["web-0"].check().returncode == 0
    assert [a["vm"] for a in control.state()["approvals"]] == ["web-0"]
    control.remove(event_id)
    assert agents["web-0"].check().returncode == 0
    assert control.nic_pools("web-0-nic") != []
    assert agents["web-0"].check().returncode == 0
    before = len([r for r in control.requests() if "/metadata/" not in r["path"]])
    modules_file = tmp_path / "modules.txt"
    done = agents["web-0"].check(TEST_MODULES_OUT=str(modules_file))
    assert done.returncode == 0, done.stderr
    modules = set(modules_file.read_text().split())
    assert "drainer.app.runner" in modules
    assert {m for m in modules if m.split(".")[0] == "azure"} == set()
    after = [r for r in control.requests() if "/metadata/" not in r["path"]]
    assert after[before:] == []


def test_a_forced_drain_below_the_floor_is_visible_when_the_peers_cannot_be_read(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # A peer's NIC answers 403 (a role assignment removed): a forced drain goes ahead, as it should,
    # and the pool read again after it shows the breach (status, the warning, the counter).
    agents = fleet_agents(emulator, tmp_path, VMS[:2], fleet_config(min_in_service=4), zygote)
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    control.schedule("Reboot", ["web-1"], not_before_in=900)
    assert agents["web-0"].check().returncode == 0
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"  # 4 left
    control.fault(match="/networkInterfaces/web-2-nic", status=403, count=1000, method="GET")
    done = agents["web-1"].check(TEST_CLOCK_OFFSET="840")  # NotBefore within force_before_seconds
    control.clear_faults()
    assert agents["web-1"].status()["vm"]["drain_state"] == "drained"
    assert lowest_in_service(control, five) == 3  # below min_in_service = 4
    events = [r["event"] for r in log_records(done.stderr)]
    assert "a pool is below its floor after this drain" in events, events
    assert agents["web-1"].status().get("floor_breach"), events


def test_no_approval_lands_within_near_seconds_of_not_before(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # approve() takes "now" once, then reads the other listed VMs' NICs from ARM (Retry-After
    # honoured, up to [azure] deadline), then decides with that old "now" and POSTs: an ARM read
    # that takes 25 s moves the approval into the last near_seconds before NotBefore.
    base = APPROVING.replace("deadline = 20.0", "deadline = 60.0").replace(
        "peer_check_interval = 0", "peer_check_interval = 0\nnear_seconds = 30"
    )
    agents = fleet_agents(emulator, tmp_path, VMS[:2], fleet_config(min_in_service=0, base=base), zygote)
    event_id = control.schedule("Reboot", VMS[:2], not_before_in=50)
    scheduled = next(e for e in control.state()["events"] if e["EventId"] == event_id)
    not_before = parsedate_to_datetime(scheduled["NotBefore"]).timestamp()
    assert agents["web-0"].check().returncode == 0  # out; waits for web-1
    assert agents["web-1"].check().returncode == 0  # out; its turn is a slot later
    assert control.state()["approvals"] == []
    control.fault(match="/networkInterfaces/web-1-nic", status=429, retry_after="25", count=1, method="GET")
    done = agents["web-0"].check()
    assert done.returncode == 0, done.stderr
    approvals = control.state()["approvals"]
    late = [round(not_before - a["at"], 1) for a in approvals if not_before - a["at"] <= 30]
    assert late == [], f"approved {late} s before NotBefore (near_seconds = 30)"


def test_the_approver_itself_is_in_no_pool_when_it_approves(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # web-0 (nic method) is in lb-web's NIC-based pool and, by address, in lb-api's IP-based pool.
    # The drain takes it out of the first only; the approval rule trusts this VM's own drain state
    # (DRAINED) and never looks at its remaining membership: the maintenance starts while web-0
    # still serves through lb-api.
    control.add_load_balancer("lb-web", pools=["web-pool"])
    control.join("web-0", "lb-web", "web-pool")
    control.add_load_balancer("lb-api", pools=[], ip_pools=["api-pool"])
    control.add_ip_member("lb-api", "api-pool", "web-0")
    agents = fleet_agents(
        emulator, tmp_path, ["web-0"], fleet_config(min_in_service=0, base=APPROVING), zygote
    )
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agents["web-0"].check().returncode == 0
    assert control.nic_pools("web-0-nic") == []
    approvals = control.state()["approvals"]
    assert [a["in_pool"] for a in approvals] in ([], [[]]), [(a["vm"], a["in_pool"]) for a in approvals]


def test_the_daemon_with_default_back_off_keeps_a_held_drain_held(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # The same hole as test_a_held_drain_is_not_carried_out_by_the_next_reconcile, with the shipped
    # back-off (retry_max_seconds = 60: a held drain is retried every 15 s) and `drainer run`: the
    # poll after the held drain reconciles, and the reconcile takes web-1 out.
    base = DEFAULT_CONFIG.replace("retry_max_seconds = 0", "retry_max_seconds = 60")
    config = fleet_config(min_in_service=1, max_unavailable=1, base=base)
    agents = fleet_agents(emulator, tmp_path, VMS[:2], config, zygote)
    agents["web-1"].config_text = config + "\n[daemon]\npoll_interval = 0.2\nstop_timeout = 20\n"
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    daemon = Daemon(agents["web-1"])
    daemon.start()
    try:
        first: datetime | None = None
        until = time.monotonic() + 60
        while time.monotonic() < until:  # poll for the outcome: out, or 3 s of the daemon's checks
            checked = agents["web-1"].status()["last_successful_check"]
            if checked:
                at = datetime.fromisoformat(checked.replace("Z", "+00:00"))
                first = first or at
                if control.nic_pools("web-1-nic") == [] or at - first >= timedelta(seconds=3):
                    break
    finally:
        daemon.stop()
    assert first is not None, daemon.log()[-2000:]
    assert control.nic_pools("web-1-nic") != [], daemon.log()[-3000:]
    assert "max_unavailable=1" in agents["web-1"].status()["vm"]["held"]


def test_max_unavailable_counts_vms_and_min_in_service_counts_members(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # Found: the docs said "members" while the rule counts claims, one per VM. Decided: the VMs out
    # by drainer's choice (a claim is a VM's); min_in_service still counts members. web-0 with two
    # NICs in the pool takes one slot of two; web-1 the other; web-2 none.
    control.add_nic("web-0", "web-0-nic2")
    control.join("web-0", "lb-web", "web-pool", nic="web-0-nic2")
    control.reset_stats()
    agents = fleet_agents(
        emulator, tmp_path, VMS[:3], fleet_config(min_in_service=1, max_unavailable=2), zygote
    )
    for name in VMS[:3]:
        control.schedule("Reboot", [name], not_before_in=3600)
    for name in VMS[:3]:
        assert agents[name].check().returncode == 0
    drained = sorted(n for n, a in agents.items() if a.status()["vm"]["drain_state"] == "drained")
    assert drained == ["web-0", "web-1"]
    assert "max_unavailable=2" in agents["web-2"].status()["vm"]["held"]
    assert min(c for _, p, c in control.stats()["timeline"] if p == five.lower()) == 3  # 6 members - 3


def test_a_tag_policy_that_strips_intents_does_not_let_every_vm_leave(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, five: str, zygote: Zygote | None
) -> None:
    # An Azure Policy that silently removes drainer* tags on write (modify effect): no intent is
    # ever stored, so no VM could see another leave. Each early drain fails saying so (nothing is
    # taken out) until the platform forces it.
    control.arm_settings(tag_policy="strip")
    agents = fleet_agents(
        emulator, tmp_path, VMS[:2], fleet_config(min_in_service=1, max_unavailable=1), zygote
    )
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    for name in VMS[:2]:
        assert agents[name].check().returncode == 1
        vm = agents[name].status()["vm"]
        assert "does not keep drainer's intent tag" in vm["last_error"], vm
        assert vm["in_rotation"] is True
    assert lowest_in_service(control, five) == len(VMS)
