"""Attacks on "Where the truth lives" (README), found by an adversarial review of the change: each
failed against the first version of the design and passes now. Attacks that still succeed are listed
in the README as known limits (a forged record tag, a forward clock step during a 404, deep nesting
anywhere in the document, a manual hold lost with the state directory)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import Agent
from tests.test_truth import API_POOL, CONFIG, RG, WEB_POOL, ok, pools_of, tagged, two_pools

__all__ = ["tagged", "two_pools"]  # fixtures re-used from tests/test_truth.py

OTHER_POOL = f"{RG}/loadBalancers/lb-other/backendAddressPools/other-pool"


def set_tags(emulator: RunningEmulator, nic: str, tags: dict[str, str]) -> None:
    """Someone (an operator, another tool) sets tags on a NIC, as a PATCH of its tags would."""
    arm = emulator.model.arm
    with arm.lock:
        arm.nics[nic.lower()].setdefault("tags", {}).update(tags)


def test_strip_policy_crash_after_the_nic_write_loses_the_only_record(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Policy strips drainer tags; a crash right after the NIC PUT leaves the VM out for good."""
    two_pools.arm_settings(tag_policy="strip")
    event_id = two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check(TEST_CRASH_AT="nic-written")
    assert done.returncode == 137
    assert pools_of(two_pools, "web-0-nic") == []
    ok(tagged.check())
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_many_foreign_tags_push_the_record_off_the_nic_and_losing_state_strands_the_vm(
    tagged: Agent, two_pools: EmulatorControl, emulator: RunningEmulator
) -> None:
    """47 foreign tags: the record silently goes local (no policy) and rm -rf state leaves the VM out.
    (Two records and their MAC take the other three slots of Azure's 50: the summary gives way.)"""
    set_tags(emulator, "web-0-nic", {f"team-{i:02d}": "x" for i in range(47)})
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    shutil.rmtree(tagged.state_dir)
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_deny_policy_and_one_404_lb_keep_the_vm_out_of_its_present_pools(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """With a deny policy, a 404 on one LB makes the restore write records -> 403 -> no pool back."""
    two_pools.add_load_balancer("lb-other", pools=["other-pool"])
    two_pools.join("web-0", "lb-other", "other-pool")
    two_pools.join("web-1", "lb-other", "other-pool")
    two_pools.arm_settings(tag_policy="deny")
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    two_pools.fault(match="/loadBalancers/lb-other", status=404, count=1, method="GET")
    tagged.check()  # other-pool answered 404 once: only that one may wait
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def move_nic(emulator: RunningEmulator, nic: str, to_vm: str) -> None:
    """An operator detaches a NIC and attaches it to another VM (both VMs stopped meanwhile)."""
    arm = emulator.model.arm
    with arm.lock:
        body = arm.nics[nic.lower()]
        old = body["properties"]["virtualMachine"]["id"]
        body["properties"]["virtualMachine"]["id"] = old.rsplit("/", 1)[0] + "/" + to_vm


def test_restore_puts_back_another_vms_nic_during_that_vms_maintenance(
    tagged: Agent, two_pools: EmulatorControl, emulator: RunningEmulator
) -> None:
    """A NIC known from the ledger is restored although it now belongs to web-1, which is drained."""
    boot = tagged.tmp / "boot_id"
    boot.write_text("boot-1\n")
    tagged.extra_env["TEST_BOOT_ID_FILE"] = str(boot)
    two_pools.add_nic("web-0", "web-0-nic2")
    two_pools.join("web-0", "lb-web", "web-pool", nic="web-0-nic2")
    event0 = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic2") == []
    move_nic(emulator, "web-0-nic2", "web-1")
    boot.write_text("boot-2\n")  # web-0 was stopped for the move: it runs again with a new boot
    web1 = Agent(emulator=tagged.emulator, tmp=tagged.tmp / "web-1", vm="web-1", config_text=CONFIG)
    web1.tmp.mkdir()
    two_pools.schedule("Reboot", ["web-1"])
    ok(web1.check())
    assert pools_of(two_pools, "web-1-nic") == []
    assert pools_of(two_pools, "web-0-nic2") == []  # web-1's maintenance: its NICs are out
    two_pools.remove(event0)
    ok(tagged.check())  # web-0's maintenance is over
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert pools_of(two_pools, "web-0-nic2") == []  # web-1's NIC, still in web-1's maintenance


def test_duplicate_event_id_in_another_vms_event_hides_this_vms_event(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Another VM's event carrying the same EventId, listed first, makes web-0's own event ignored."""
    doc = {
        "DocumentIncarnation": 7,
        "Events": [
            {
                "EventId": "A123BC45-1234-5678-AB90-ABCDEF123456",
                "EventStatus": "Scheduled",
                "EventType": "Freeze",
                "ResourceType": "VirtualMachine",
                "Resources": ["web-1"],
                "NotBefore": "",
                "Description": "",
                "EventSource": "Platform",
                "DurationInSeconds": 5,
            },
            {
                "EventId": "A123BC45-1234-5678-AB90-ABCDEF123456",
                "EventStatus": "Scheduled",
                "EventType": "Reboot",
                "ResourceType": "VirtualMachine",
                "Resources": ["web-0"],
                "NotBefore": "",
                "Description": "",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            },
        ],
    }
    two_pools.set_document(json.dumps(doc))
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []  # web-0's Reboot must take it out


def test_method_changed_while_drained_never_reads_the_nic_record(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Drained by method nic; config switched to admin-state mid-maintenance: the NIC stays out."""
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    tagged.config_text = CONFIG + 'method = "admin-state"\n'
    two_pools.remove(event_id)
    ok(tagged.check())  # the restore "succeeds": nothing to restore for admin-state
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def as_previous_release(db: Path) -> None:
    """Turn a state database into what the previous release (schema 4) wrote: no cached identity."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("DELETE FROM meta WHERE key = 'vm'")
        con.execute("DROP TABLE absent")
        con.execute("ALTER TABLE vm DROP COLUMN last_reconcile_at")
        con.execute("ALTER TABLE vm DROP COLUMN last_reconcile")
        con.execute("PRAGMA user_version = 4")
        con.commit()


def test_state_dir_of_another_vm_from_the_previous_release_is_acted_on(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """An image captured from drained web-1 (previous release, no cached identity): web-0 restores
    web-1's NIC during web-1's maintenance."""
    boot = tagged.tmp / "boot_id"
    boot.write_text("boot-web-1\n")
    web1 = Agent(emulator=tagged.emulator, tmp=tagged.tmp / "web-1", vm="web-1", config_text=CONFIG)
    web1.tmp.mkdir()
    two_pools.schedule("Reboot", ["web-1"])
    ok(web1.check(TEST_BOOT_ID_FILE=str(boot)))
    assert pools_of(two_pools, "web-1-nic") == []
    web1_db = web1.state_dir / "state.db"
    ok(web1.run("status"))  # checkpoint the WAL into state.db before the copy
    shutil.copytree(web1.state_dir, tagged.state_dir)
    as_previous_release(tagged.state_dir / "state.db")
    boot.write_text("boot-web-0\n")  # the new VM's first boot, upgraded drainer
    tagged.check(TEST_BOOT_ID_FILE=str(boot))
    assert pools_of(two_pools, "web-1-nic") == []  # web-1 is still in its maintenance
    assert web1_db.exists()


def event(
    event_id: str, resources: list[str], event_type: str = "Reboot", **extra: object
) -> dict[str, object]:
    return {
        "EventId": event_id,
        "EventStatus": "Scheduled",
        "EventType": event_type,
        "ResourceType": "VirtualMachine",
        "Resources": resources,
        "NotBefore": "",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
        **extra,
    }


def test_a_nul_in_another_vms_event_source_blocks_this_vms_drain_with_on_event_hooks(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """A NUL byte in web-1's EventSource crashes the on-event hook run: web-0's own event is not handled."""
    hooks = tagged.tmp / "hooks"
    (hooks / "on-event").mkdir(parents=True)
    hooks.chmod(0o755)
    script = hooks / "on-event" / "10-log"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    tagged.config_text = CONFIG.replace("[drain]", f'[hooks]\ndir = "{hooks}"\n\n[drain]')
    doc = {
        "DocumentIncarnation": 3,
        "Events": [
            event("11111111-1111-1111-1111-111111111111", ["web-1"], EventSource="Plat\u0000form"),
            event("22222222-2222-2222-2222-222222222222", ["web-0"]),
        ],
    }
    two_pools.set_document(json.dumps(doc))
    done = tagged.check()
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert pools_of(two_pools, "web-0-nic") == []


def test_a_forged_admin_record_puts_another_vms_address_back_in_service(
    tagged: Agent, control: EmulatorControl, emulator: RunningEmulator
) -> None:
    """A drainer:adm: tag on web-0's NIC naming web-1's address: web-0's boot reconcile sets it Up."""
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for vm in ("web-0", "web-2"):
        control.add_ip_member("lb-ip", "ip-pool", vm)
    control.add_ip_member("lb-ip", "ip-pool", "web-1", "Down", name="web-1-addr")  # the operator's
    set_tags(emulator, "web-0-nic", {"drainer:adm:None:web-1-addr": "rg-drainer/lb-ip/ip-pool"})
    tagged.config_text = CONFIG + 'method = "admin-state"\n'
    pool = f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"
    assert "ip=10.0.0.5 (Down)" in control.membership()[pool]
    tagged.check()
    states = control.membership()[f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"]
    assert any("(Down)" in s for s in states), states


def test_dry_run_after_a_crashed_run_writes_to_the_state_dir(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """A crashed run leaves state.db-wal/-shm: the dry run's read-only open rewrites the state dir."""
    two_pools.schedule("Reboot", ["web-0"])
    assert tagged.check(TEST_CRASH_AT="recorded-drain").returncode == 137
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tagged.state_dir.iterdir()}
    ok(tagged.run("--dry-run", "check"))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tagged.state_dir.iterdir()}
    assert sorted(after) == sorted(before)
    assert [n for n in before if before[n] != after[n]] == []


def set_admin_state(emulator: RunningEmulator, lb: str, pool: str, address: str, value: str) -> None:
    """An operator sets one backend address's admin state."""
    arm = emulator.model.arm
    with arm.lock:
        entry = arm._pool(lb, pool)
        for item in entry["properties"]["loadBalancerBackendAddresses"]:
            if item["name"] == address:
                item["properties"]["adminState"] = value


def test_admin_state_refused_pool_write_leaves_a_record_that_undoes_an_operators_down(
    tagged: Agent, control: EmulatorControl, emulator: RunningEmulator
) -> None:
    """admin-state: the pool PUT is refused (409) but the NIC record stays; the later restore sets
    back 'None' on an address the operator set Down meanwhile."""
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.add_ip_member("lb-ip", "ip-pool", vm, name=f"{vm}-addr")
    tagged.config_text = CONFIG + 'method = "admin-state"\n'
    pool = f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"
    event_id = control.schedule("Reboot", ["web-0"])
    control.fault(match="/loadBalancers/lb-ip/backendAddressPools/ip-pool", status=409, count=1, method="PUT")
    assert tagged.check().returncode == 1  # the drain write was refused
    assert "ip=10.0.0.4 (None)" in control.membership()[pool]
    control.remove(event_id)  # the maintenance is cancelled before any retry
    set_admin_state(emulator, "lb-ip", "ip-pool", "web-0-addr", "Down")  # the operator's own decision
    tagged.check()
    tagged.check()
    assert "ip=10.0.0.4 (Down)" in control.membership()[pool]
