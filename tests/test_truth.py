"""The truth lives in Azure: every way the first release lost a VM from its pool, tried through the
CLI against the emulator (real azure-mgmt-network and azure-identity clients in the subprocess).

Each test is one failure of the local copy of the world (lost, corrupt or foreign state, a transient
404, a refused write, a cached NIC list, a stepped clock, an unknown status, a hostile value, an IP
range in two virtual networks, a restarted probe daemon) and checks that the VM ends up exactly as it
was: in its original pools, with no record left on its NIC, and no other VM's resource touched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent, log_records

SUB = "8d10da13-8125-4ba9-a717-bf7490507b3d"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-drainer/providers/Microsoft.Network"
WEB_POOL = f"{RG}/loadBalancers/lb-web/backendAddressPools/web-pool"
API_POOL = f"{RG}/loadBalancers/lb-web/backendAddressPools/api-pool"
# Restores drop a pool only after 3 answers of 404; no waiting in time for the tests. No floor: the
# NIC's writes are the drain's and the restore's alone (tests/test_fleet.py has the floor's intents).
CONFIG = DEFAULT_CONFIG + "\n[drain]\ngone_after_reads = 3\ngone_after_seconds = 0\nmin_in_service = 0\n"


@pytest.fixture
def two_pools(control: EmulatorControl) -> EmulatorControl:
    control.add_load_balancer("lb-web", pools=["web-pool", "api-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.join(vm, "lb-web", "web-pool")
        control.join(vm, "lb-web", "api-pool")
    return control


@pytest.fixture
def tagged(agent: Agent) -> Agent:
    agent.config_text = CONFIG
    return agent


def pools_of(control: EmulatorControl, nic: str) -> list[str]:
    return control.nic_pools(nic)


def drainer_tags(control: EmulatorControl, nic: str) -> dict[str, str]:
    tags: dict[str, str] = control.nic(nic).get("tags") or {}
    return {k: v for k, v in tags.items() if k.lower().startswith("drainer")}


def ok(done: Any) -> None:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def drain(agent: Agent, control: EmulatorControl, vm: str = "web-0") -> str:
    event_id = control.schedule("Reboot", [vm])
    ok(agent.check())
    return event_id


# -- the record lives on the NIC ----------------------------------------------------------------


def test_the_drain_write_records_on_the_nic_and_the_restore_write_removes_it(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    two_pools.concurrent_change("web-0-nic", tag=("owner", "team-a"))  # a foreign tag, set meanwhile
    event_id = drain(tagged, two_pools)
    assert pools_of(two_pools, "web-0-nic") == []
    tags = drainer_tags(two_pools, "web-0-nic")
    assert sorted(v for k, v in tags.items() if k.startswith("drainer:lb:")) == [
        "rg-drainer/lb-web/api-pool",
        "rg-drainer/lb-web/web-pool",
    ]
    assert "Reboot" in tags["drainer:out"] and "vm=web-0" in tags["drainer:out"]
    # Removal and record were one write (plus the foreign tag kept in it).
    nic_writes = [w for w in two_pools.arm_writes() if w["kind"] == "nic"]
    assert len(nic_writes) == 1
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert drainer_tags(two_pools, "web-0-nic") == {}
    assert two_pools.nic("web-0-nic")["tags"] == {"owner": "team-a"}
    assert len([w for w in two_pools.arm_writes() if w["kind"] == "nic"]) == 2


@pytest.mark.parametrize("damage", ["deleted", "emptied", "corrupted"])
def test_state_dir_lost_while_drained_is_recovered_from_the_nic(
    tagged: Agent, two_pools: EmulatorControl, damage: str
) -> None:
    event_id = drain(tagged, two_pools)
    db = tagged.state_dir / "state.db"
    if damage == "deleted":
        shutil.rmtree(tagged.state_dir)
    elif damage == "emptied":
        for extra in tagged.state_dir.glob("state.db-*"):
            extra.unlink()
        db.write_bytes(b"")
    else:
        for extra in tagged.state_dir.glob("state.db-*"):
            extra.unlink()
        db.write_bytes(b"SQLite format 3\x00" + b"\xde\xad" * 3000)
    two_pools.remove(event_id)  # the maintenance ended while the state was gone
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert drainer_tags(two_pools, "web-0-nic") == {}
    if damage == "corrupted":
        assert any("moved aside" in r.get("event", "") for r in log_records(done.stderr))
        assert list(tagged.state_dir.glob("state.db.corrupt-*"))
    status = tagged.status()
    assert status["vm"]["in_rotation"] is True
    assert status["last_reconcile"]["found"] and status["state_dir"] == str(tagged.state_dir)


def test_state_dir_lost_while_the_event_is_still_listed_keeps_the_vm_out(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    event_id = drain(tagged, two_pools)
    shutil.rmtree(tagged.state_dir)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []  # still out: the event still holds it
    assert len(drainer_tags(two_pools, "web-0-nic")) == 4  # summary, the two pools, the MAC
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


# -- never conclude "gone" from one answer ---------------------------------------------------------


def test_one_transient_404_during_a_restore_never_drops_the_pool(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    event_id = drain(tagged, two_pools)
    two_pools.remove(event_id)
    two_pools.fault(match="/loadBalancers/lb-web", status=404, count=1, method="GET")
    done = tagged.check()
    assert done.returncode == 1  # the restore is incomplete, and says so
    assert "answered 404" in done.stderr
    assert pools_of(two_pools, "web-0-nic") == []
    assert len(drainer_tags(two_pools, "web-0-nic")) == 4  # the record (and its MAC) stays on the NIC
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert drainer_tags(two_pools, "web-0-nic") == {}


def test_a_pool_really_deleted_is_dropped_only_after_confirmation_and_loudly(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    event_id = drain(tagged, two_pools)
    two_pools.remove(event_id)
    two_pools.delete_pool("lb-web", "api-pool")
    for _ in range(2):  # two answers of 404: not yet confirmed
        done = tagged.check()
        assert done.returncode == 1
        assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]  # the rest is back already
        assert any(v.endswith("/api-pool") for v in drainer_tags(two_pools, "web-0-nic").values())
    done = tagged.check()  # the third: confirmed gone
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]
    assert drainer_tags(two_pools, "web-0-nic") == {}
    assert any("confirmed gone" in r.get("event", "") for r in log_records(done.stderr))


def test_a_refused_drain_write_records_nothing_and_an_operators_removal_is_kept(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    event_id = control_event = two_pools.schedule("Reboot", ["web-0"])
    two_pools.fault(match="/networkInterfaces/web-0-nic", status=409, count=1, method="PUT")
    done = tagged.check()
    assert done.returncode == 1  # the drain failed
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert drainer_tags(two_pools, "web-0-nic") == {}
    assert tagged.status()["vm"]["removed"] == []
    two_pools.leave("web-0", "lb-web", "api-pool")  # the operator takes web-0 out of api-pool
    ok(tagged.check())  # the drain is retried and succeeds
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]  # api-pool is not added back
    assert control_event


# -- know who you are -------------------------------------------------------------------------------


def test_a_state_dir_from_another_vm_is_never_acted_on(
    tagged: Agent, two_pools: EmulatorControl, tmp_path: Path
) -> None:
    """An image captured after drainer ran on web-0 (drained): web-1 boots from it."""
    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    web0_event = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check(TEST_BOOT_ID_FILE=str(boot)))
    assert pools_of(two_pools, "web-0-nic") == []
    web1 = Agent(emulator=tagged.emulator, tmp=tmp_path / "web-1", vm="web-1", config_text=CONFIG)
    shutil.copytree(tagged.state_dir, web1.state_dir)
    boot.write_text("boot-b\n")  # a new VM: a new boot
    web1_event = two_pools.schedule("Redeploy", ["web-1"])
    done = web1.check(TEST_BOOT_ID_FILE=str(boot))
    ok(done)
    assert any("belongs to another VM" in r.get("event", "") for r in log_records(done.stderr))
    assert pools_of(two_pools, "web-1-nic") == []  # its own event: drained
    assert pools_of(two_pools, "web-0-nic") == []  # web-0's NIC: untouched (still web-0's drain)
    status = web1.status()
    assert [e["event_id"] for e in status["events"] if e["state"] == "active"] == [web1_event]
    assert two_pools.state()["approvals"] == []  # web-0's maintenance was not approved by web-1
    two_pools.remove(web1_event)
    ok(web1.check(TEST_BOOT_ID_FILE=str(boot)))
    assert pools_of(two_pools, "web-1-nic") == sorted([WEB_POOL, API_POOL])
    assert pools_of(two_pools, "web-0-nic") == []  # still web-0's business
    assert web0_event


def test_the_same_boot_with_a_cached_identity_of_another_vm_is_caught_before_the_drain(
    tagged: Agent, two_pools: EmulatorControl, tmp_path: Path
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("same-boot\n")
    ok(tagged.check(TEST_BOOT_ID_FILE=str(boot)))  # web-0 caches its identity
    web1 = Agent(emulator=tagged.emulator, tmp=tmp_path / "web-1", vm="web-1", config_text=CONFIG)
    shutil.copytree(tagged.state_dir, web1.state_dir)
    two_pools.schedule("Reboot", ["web-0"])  # web-0's event, seen by web-1 under web-0's cached name
    two_pools.schedule("Reboot", ["web-1"])
    ok(web1.check(TEST_BOOT_ID_FILE=str(boot)))
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert pools_of(two_pools, "web-1-nic") == []


def test_a_nic_attached_after_a_cycle_is_drained_too(tagged: Agent, two_pools: EmulatorControl) -> None:
    boot = tagged.tmp / "boot_id"
    boot.write_text("boot-1\n")
    tagged.extra_env["TEST_BOOT_ID_FILE"] = str(boot)
    first = drain(tagged, two_pools)
    two_pools.remove(first)
    ok(tagged.check())
    # Azure attaches a NIC only while the VM is stopped (deallocated): it runs again with a new boot.
    two_pools.add_nic("web-0", "web-0-nic2")
    two_pools.join("web-0", "lb-web", "web-pool", nic="web-0-nic2")
    boot.write_text("boot-2\n")
    drain(tagged, two_pools)
    assert pools_of(two_pools, "web-0-nic") == []
    assert pools_of(two_pools, "web-0-nic2") == []


def test_dry_run_writes_nothing_to_the_state_dir(tagged: Agent, two_pools: EmulatorControl) -> None:
    two_pools.schedule("Reboot", ["web-0"])
    done = tagged.run("--dry-run", "check")
    ok(done)
    assert not tagged.state_dir.exists()
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert "succeeded" not in done.stderr and "removed NIC" not in done.stderr
    ok(tagged.check())  # a real run: drains, creates the state
    snapshot = {p.name: p.stat().st_mtime_ns for p in tagged.state_dir.iterdir()}
    ok(tagged.run("--dry-run", "check"))
    assert {p.name: p.stat().st_mtime_ns for p in tagged.state_dir.iterdir()} == snapshot


# -- time ----------------------------------------------------------------------------------------------


def test_a_wall_clock_stepping_back_does_not_stall_a_failed_restore(
    agent: Agent, two_pools: EmulatorControl
) -> None:
    agent.config_text = CONFIG.replace("retry_max_seconds = 0", "retry_max_seconds = 3600")
    event_id = drain(agent, two_pools)
    two_pools.remove(event_id)
    two_pools.fault(match="/networkInterfaces/web-0-nic", status=500, count=100, method="PUT")
    assert agent.check().returncode == 1  # the restore failed: retried with backoff (1 s, then 2 s...)
    two_pools.clear_faults()
    # The clock steps back one hour: the backoff must not wait for it to catch up.
    ok(agent.check(TEST_CLOCK_OFFSET="-3600"))
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


# -- unknown is not gone; hostile values are data ------------------------------------------------------


def _document(*events: dict[str, Any], incarnation: Any = 7) -> str:
    return json.dumps({"DocumentIncarnation": incarnation, "Events": list(events)})


def _event(event_id: str, vm: str, **fields: Any) -> dict[str, Any]:
    return {
        "EventId": event_id,
        "EventType": "Reboot",
        "ResourceType": "VirtualMachine",
        "Resources": [vm],
        "EventStatus": "Scheduled",
        "NotBefore": "Mon, 30 Nov 2026 04:00:00 GMT",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
        **fields,
    }


def test_an_unknown_status_mid_event_keeps_holding_the_vm(tagged: Agent, two_pools: EmulatorControl) -> None:
    two_pools.set_document(_document(_event("E1", "web-0")))
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.set_document(_document(_event("E1", "web-0", EventStatus="Paused"), incarnation=8))
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == []  # not restored while still listed
    assert "Paused" in done.stderr
    two_pools.set_document(_document(_event("E1", "web-0", EventType="Hibernate"), incarnation=9))
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.set_document(_document(incarnation=10))
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


HOSTILE = [
    {"NotBefore": "Fri, 31 Dec 9999 23:59:59 GMT"},
    {"NotBefore": "9999-12-31T23:59:59-23:59"},
    {"DurationInSeconds": 10**30},
    {"Description": "\ud800 lone surrogate \x1b[2J"},
    {"Resources": ["web-1", 5, None, "x" * 10_000]},
    {"EventId": 12345},
    {"EventType": ["Reboot"]},
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[next(iter(h)) + str(i) for i, h in enumerate(HOSTILE)])
def test_a_hostile_value_in_another_vms_event_never_blocks_this_vms_event(
    tagged: Agent, two_pools: EmulatorControl, hostile: dict[str, Any]
) -> None:
    body = _document(_event("OTHER", "web-1", **hostile), _event("MINE", "web-0"))
    # Values JSON can carry but json.dumps refuses to write as is: a lone surrogate, a huge integer.
    two_pools.set_document(body.replace("\\ud800", "\\ud800"))
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == []
    assert pools_of(two_pools, "web-1-nic") == sorted([WEB_POOL, API_POOL])
    ok(tagged.run("status"))
    ok(tagged.run("history"))


def test_a_5000_digit_incarnation_and_deep_nesting_elsewhere_do_not_crash(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    mine = json.dumps(_event("MINE", "web-0"))
    two_pools.set_document('{"DocumentIncarnation": ' + "9" * 5000 + ', "Events": [' + mine + "]}")
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.set_document('{"DocumentIncarnation": 1, "Events": [' + "[" * 100_000 + "]" * 100_000 + "]}")
    done = tagged.check()
    assert done.returncode == 1  # the document as a whole is not readable: nothing changes
    assert "Traceback" not in done.stderr
    assert pools_of(two_pools, "web-0-nic") == []


def test_an_invalid_event_listing_this_vm_drains_it(tagged: Agent, two_pools: EmulatorControl) -> None:
    two_pools.set_document(_document(_event("MINE", "web-0", DurationInSeconds="soon", EventStatus=3)))
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []


# -- admin-state: IP and virtual network ---------------------------------------------------------------


def test_admin_state_matches_by_ip_and_virtual_network(tagged: Agent, control: EmulatorControl) -> None:
    tagged.config_text = CONFIG.replace("[drain]", '[drain]\nmethod = "admin-state"')
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    control.add_ip_member("lb-ip", "ip-pool", "web-0")
    control.add_ip_member("lb-ip", "ip-pool", "web-0", vnet="other-vnet", name="same-ip-other-vnet")
    control.add_ip_member("lb-ip", "ip-pool", "web-1")
    event_id = control.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    states = control.membership()[f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"]
    downs = [s for s in states if "(Down)" in s]
    assert len(downs) == 1  # only web-0's own address, not the same IP in the other network
    assert any(k.startswith("drainer:adm:") for k in drainer_tags(control, "web-0-nic"))
    shutil.rmtree(tagged.state_dir)  # the record on the NIC is enough to put it back
    control.remove(event_id)
    ok(tagged.check())
    states = control.membership()[f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"]
    assert not any("(Down)" in s for s in states)
    assert drainer_tags(control, "web-0-nic") == {}


# -- an Azure Policy on tags -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["deny", "strip"])
def test_a_policy_on_tags_falls_back_to_the_local_record(
    tagged: Agent, two_pools: EmulatorControl, policy: str
) -> None:
    two_pools.arm_settings(tag_policy=policy)
    event_id = two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == []
    assert drainer_tags(two_pools, "web-0-nic") == {}
    lines = [r for r in log_records(done.stderr) if "Azure Policy" in r.get("event", "")]
    assert len(lines) == 1
    assert {r["status"] for r in tagged.status()["vm"]["removed"]} == {"removed"}
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


# -- probe: readiness from the persisted state -----------------------------------------------------


def test_a_probe_daemon_restarted_while_drained_answers_503_from_its_first_request(
    agent: Agent, control: EmulatorControl
) -> None:
    from tests.test_daemon import Daemon, daemon_config, fetch, free_port, probe_section, wait_until

    probe_port = free_port()
    flag_dir = agent.tmp / "run-drainer"  # what systemd's RuntimeDirectory= removes on stop
    daemon_config(
        agent,
        free_port(),
        probe_section(probe_port, flag_dir / "out-of-rotation"),
    )
    ready = f"http://127.0.0.1:{probe_port}/ready"
    first = Daemon(agent)
    first.start()
    try:
        wait_until(lambda: fetch(ready)[0] == 200, what="ready")
        event_id = control.schedule("Reboot", ["web-0"])
        wait_until(lambda: fetch(ready)[0] == 503, what="not ready while drained")
        assert first.stop() == 0
    finally:
        if first.process and first.process.poll() is None:
            first.process.kill()
    shutil.rmtree(flag_dir)  # the runtime directory is gone, the VM is still drained
    second = Daemon(agent)
    second.start()
    try:
        answers: list[int] = []
        wait_until(lambda: answers.append(fetch(ready)[0]) or answers[-1] != 0, what="probe answers")
        assert answers[-1] == 503  # the very first answer: still out of rotation
        wait_until((flag_dir / "out-of-rotation").exists, what="the flag put back")
        assert fetch(ready)[0] == 503
        control.remove(event_id)
        wait_until(lambda: fetch(ready)[0] == 200, what="ready again after the event")
        assert second.stop() == 0
    finally:
        if second.process and second.process.poll() is None:
            second.process.kill()


def test_a_failed_reconcile_after_state_loss_is_retried_at_once(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Found by the chaos test (seed 11, scenarios 44 and 139): a reconcile that failed was not
    retried for reconcile_active_seconds, and it was all that stood between the VM and its pools."""
    event_id = drain(tagged, two_pools)
    two_pools.remove(event_id)
    shutil.rmtree(tagged.state_dir)
    two_pools.fault(match="/networkInterfaces/web-0-nic", status=409, count=1, method="PUT")
    assert tagged.check().returncode == 1  # the reconcile's restore write was refused
    assert pools_of(two_pools, "web-0-nic") == []
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_a_confirmed_drop_is_counted_in_the_metrics(tagged: Agent, two_pools: EmulatorControl) -> None:
    textfile = tagged.tmp / "textfile" / "drainer.prom"
    textfile.parent.mkdir(mode=0o755)
    tagged.config_text = (
        CONFIG.replace("gone_after_reads = 3", "gone_after_reads = 1")
        + f'\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    )
    event_id = drain(tagged, two_pools)
    two_pools.remove(event_id)
    two_pools.delete_pool("lb-web", "api-pool")
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]
    assert 'drainer_dropped_total{kind="lb-pool"} 1.0' in textfile.read_text()
