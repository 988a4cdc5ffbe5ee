"""Adversarial tests of the fleet's floor, intents and early approval (review attack5, second round;
adapted in issue 19).

Every VM runs the real CLI against one emulator (real azure-mgmt-network client, no mocks)."""

from __future__ import annotations

from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.agent_entry import CRASH_EXIT
from tests.conftest import log_records
from tests.fleet import APPROVING, fleet_agents, fleet_config
from tests.zygote import Zygote


def _out_of(control: EmulatorControl, vms: list[str], nics: dict[str, list[str]], pool: str) -> list[str]:
    """The VMs (of ``vms``) none of whose NICs is in a pool whose id ends with ``pool``."""
    out = []
    for vm in vms:
        refs = [r for nic in nics.get(vm, [f"{vm}-nic"]) for r in control.nic_pools(nic)]
        if not any(r.lower().endswith(pool) for r in refs):
            out.append(vm)
    return out


def _two_pools(control: EmulatorControl) -> None:
    """lb-a/pool-a: web-0-nic, web-1, web-3. lb-b/pool-b: web-0-nic2, web-2, web-4."""
    for name in ("web-3", "web-4"):
        control.add_vm(name)
    control.add_load_balancer("lb-a", pools=["pool-a"])
    control.add_load_balancer("lb-b", pools=["pool-b"])
    control.add_nic("web-0", "web-0-nic2")
    control.join("web-0", "lb-a", "pool-a")
    control.join("web-0", "lb-b", "pool-b", nic="web-0-nic2")
    for name in ("web-1", "web-3"):
        control.join(name, "lb-a", "pool-a")
    for name in ("web-2", "web-4"):
        control.join(name, "lb-b", "pool-b")


NICS = {"web-0": ["web-0-nic", "web-0-nic2"]}


def test_a_crash_between_the_nic_writes_of_a_multi_nic_vm_does_not_drop_a_pool_from_its_claim(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # web-0 has two NICs, one in pool-a and one in pool-b; max_unavailable = 1. Its claim names both
    # pools; it crashes after the first NIC write (out of one pool). The retry plans only the pool
    # still left and rewrites the claim with that pool alone: the pool web-0 already left is no longer
    # claimed, so a second VM takes it as a free slot while web-0 is still out of it.
    _two_pools(control)
    agents = fleet_agents(
        emulator, tmp_path, ["web-0", "web-1", "web-2"], fleet_config(max_unavailable=1), zygote
    )
    for name in ("web-0", "web-1", "web-2"):
        control.schedule("Reboot", [name], not_before_in=3600)
    crashed = agents["web-0"].check(TEST_CRASH_AT="nic-written")
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert agents["web-0"].check().returncode == 0
    assert agents["web-0"].status()["vm"]["drain_state"] == "drained"
    for name in ("web-1", "web-2"):
        assert agents[name].check().returncode == 0
    for pool, members in (("pool-a", ["web-0", "web-1", "web-3"]), ("pool-b", ["web-0", "web-2", "web-4"])):
        out = _out_of(control, members, NICS, pool)
        assert len(out) <= 1, f"{pool}: {out} out at once with max_unavailable = 1"


def test_a_reconcile_taking_a_vm_out_of_one_pool_again_keeps_its_claim_on_the_others(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # web-0 (one NIC) is in pool-a and pool-b and drains out of both: its claim names both. A
    # deployment puts its NIC back into pool-b; the next reconcile takes it out again and rewrites
    # the claim with pool-b alone. web-0 is still out of pool-a, unclaimed: web-1 drains from pool-a
    # too, two VMs out of it with max_unavailable = 1.
    for name in ("web-3", "web-4"):
        control.add_vm(name)
    control.add_load_balancer("lb-a", pools=["pool-a"])
    control.add_load_balancer("lb-b", pools=["pool-b"])
    for name in ("web-0", "web-1", "web-3"):
        control.join(name, "lb-a", "pool-a")
    for name in ("web-0", "web-2", "web-4"):
        control.join(name, "lb-b", "pool-b")
    config = fleet_config(max_unavailable=1).replace(
        "retry_max_seconds = 0", "retry_max_seconds = 0\nreconcile_active_seconds = 60"
    )
    agents = fleet_agents(emulator, tmp_path, ["web-0", "web-1"], config, zygote)
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    control.schedule("Reboot", ["web-1"], not_before_in=3600)
    assert agents["web-0"].check().returncode == 0
    assert control.nic_pools("web-0-nic") == []
    control.join("web-0", "lb-b", "pool-b")  # a deployment re-applies pool-b's members
    assert agents["web-0"].check(TEST_CLOCK_OFFSET="120").returncode == 0  # the reconcile
    assert control.nic_pools("web-0-nic") == []
    assert agents["web-1"].check(TEST_CLOCK_OFFSET="120").returncode == 0
    out = _out_of(control, ["web-0", "web-1", "web-3"], {}, "pool-a")
    assert len(out) <= 1, f"pool-a: {out} out at once with max_unavailable = 1"


def test_the_second_approver_waits_its_slot_even_when_it_was_out_before_the_event(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # The k-th listed VM approves once it has been out of rotation for k slots: measured from the
    # VM's own `since`, not from the event. web-1 was taken out by hand an hour before the event
    # (as was web-0, the first approver, alive and out): at its first run after the event appears,
    # web-1 approves at once, ahead of web-0's turn. With three such VMs the event gets three POSTs
    # in the same minute ("one normally") and the stagger that protects against double approvals is
    # gone.
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
    agents = fleet_agents(
        emulator, tmp_path, ["web-0", "web-1"], fleet_config(min_in_service=0, base=APPROVING), zygote
    )
    for name in ("web-0", "web-1"):
        done = agents[name].run("drain", TEST_CLOCK_OFFSET="-3600")
        assert done.returncode == 0, done.stderr
        assert control.nic_pools(f"{name}-nic") == []
    control.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    assert agents["web-1"].check().returncode == 0
    approvals = [a["vm"] for a in control.state()["approvals"]]
    assert "web-1" not in approvals, f"the second approver approved before its slot: {approvals}"


def test_a_vm_put_back_into_its_pool_is_taken_out_again_once_the_platform_forces_it(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # web-0 drained for its Reboot. A deployment puts its NIC back into the pool and an operator
    # takes web-1 out: the pool's floor is now short. The event Starts (the platform forces it): the
    # reconcile that should take web-0 out again is never forced (action None) and is held by the
    # floor, so web-0 serves through its own reboot, and nothing reports a breach.
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1"])
    config = fleet_config(min_in_service=1).replace(
        "retry_max_seconds = 0", "retry_max_seconds = 0\nreconcile_active_seconds = 60"
    )
    agent = fleet_agents(emulator, tmp_path, ["web-0"], config, zygote)["web-0"]
    event = control.schedule("Reboot", ["web-0"], not_before_in=3600)
    assert agent.check().returncode == 0
    assert control.nic_pools("web-0-nic") == []
    control.join("web-0", "lb-web", "web-pool")
    control.leave("web-1", "lb-web", "web-pool")
    control.start(event)
    done = agent.check(TEST_CLOCK_OFFSET="120")
    assert done.returncode == 0, done.stderr
    said = [r.get("event") for r in log_records(done.stderr)]
    assert control.nic_pools("web-0-nic") == [], f"serving through a Started event: {said}"


def test_a_vm_whose_drain_is_held_after_a_crash_leaves_no_claim_behind(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # web-0 writes its claim and crashes before its NIC write (still serving). web-1's drain is then
    # forced (NotBefore in a minute) and takes the one slot; web-0's retry is held. web-0 never
    # drained, but its claim stays in the lease (up to claim_seconds): it blocks the slot, counts
    # web-0 as leaving, and made web-1's forced drain report a breach that did not happen.
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
    agents = fleet_agents(emulator, tmp_path, ["web-0", "web-1"], fleet_config(max_unavailable=1), zygote)
    control.schedule("Reboot", ["web-0"], not_before_in=3600)
    crashed = agents["web-0"].check(TEST_CRASH_AT="nic-recorded")
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    assert control.nic_pools("web-0-nic") != []
    control.schedule("Reboot", ["web-1"], not_before_in=60)
    assert agents["web-1"].check().returncode == 0
    assert control.nic_pools("web-1-nic") == []
    assert agents["web-0"].check().returncode == 0
    assert "max_unavailable=1" in (agents["web-0"].status()["vm"]["held"] or "")
    assert control.nic_pools("web-0-nic") != []
    tags = control.nic("web-0-nic").get("tags") or {}
    assert "drainer-intent" not in tags, f"web-0 serves but announces leaving: {tags}"


def test_admin_state_takes_the_vm_out_of_ip_pools_of_load_balancers_in_other_resource_groups(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path, zygote: Zygote | None
) -> None:
    # Method admin-state lists the load balancers of the VM's own resource group only. web-0's address
    # is also in an IP-based pool of a load balancer in rg-other (the fleet model's "pools in other
    # resource groups"): the drain leaves it up there, reports the VM drained, and a forced drain
    # does the same (the VM serves through its maintenance).
    control.add_load_balancer("lb-web", pools=[], ip_pools=["web-pool"])
    control.add_load_balancer("lb-api", pools=[], ip_pools=["api-pool"], resource_group="rg-other")
    for name in ("web-0", "web-1"):
        control.add_ip_member("lb-web", "web-pool", name)
        control.add_ip_member("lb-api", "api-pool", name)
    config = fleet_config(min_in_service=0, extra='method = "admin-state"\n')
    agent = fleet_agents(emulator, tmp_path, ["web-0"], config, zygote)["web-0"]
    control.schedule("Reboot", ["web-0"], not_before_in=60)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["drain_state"] == "drained"
    in_pool = emulator.model.arm.vms_in_pools(["web-0"])
    assert in_pool == [], f"'drained', still in service: {control.membership()}"
