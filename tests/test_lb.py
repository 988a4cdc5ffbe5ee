"""Taking the VM out of its load balancer and putting it back exactly as it was.

The real ``azure-mgmt-network`` and ``azure-identity`` clients (inside the CLI subprocess) talk to the
emulator's ARM subset over loopback; the emulator's own view (membership, NIC bodies, request log) is
what the assertions read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drainer.emulator.control import EmulatorControl
from tests.agent_entry import CRASH_EXIT
from tests.conftest import DEFAULT_CONFIG, Agent, log_records

SUB = "8d10da13-8125-4ba9-a717-bf7490507b3d"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-drainer/providers/Microsoft.Network"
WEB_POOL = f"{RG}/loadBalancers/lb-web/backendAddressPools/web-pool"
NO_FLOOR = DEFAULT_CONFIG + "\n[drain]\nmin_in_service = 0\n"  # the NIC writes alone, no intent
API_POOL = f"{RG}/loadBalancers/lb-web/backendAddressPools/api-pool"


@pytest.fixture
def topology(control: EmulatorControl) -> EmulatorControl:
    """lb-web with web-pool and api-pool. web-0 has two NICs: nic1 in both pools, nic2 in web-pool.
    web-1 and web-2 are in both pools."""
    control.add_load_balancer("lb-web", pools=["web-pool", "api-pool"])
    control.add_nic("web-0", "web-0-nic2")
    for vm in ("web-0", "web-1", "web-2"):
        control.join(vm, "lb-web", "web-pool")
        control.join(vm, "lb-web", "api-pool")
    control.join("web-0", "lb-web", "web-pool", nic="web-0-nic2")
    return control


def _pools(control: EmulatorControl, nic: str) -> list[str]:
    return control.nic_pools(nic)


def _arm_requests(control: EmulatorControl) -> list[dict[str, Any]]:
    return [r for r in control.requests() if r["path"].startswith("/subscriptions/")]


def _drain_then_restore(agent: Agent, control: EmulatorControl) -> str:
    event_id = control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    return event_id


def test_exact_removal_and_restore_with_two_pools_and_two_nics(
    agent: Agent, topology: EmulatorControl
) -> None:
    before = topology.membership()
    nic1_before, nic2_before = _pools(topology, "web-0-nic"), _pools(topology, "web-0-nic2")
    assert nic1_before == sorted([WEB_POOL, API_POOL])
    event_id = _drain_then_restore(agent, topology)

    during = topology.membership()
    assert during[WEB_POOL] == ["web-1-nic", "web-2-nic"]
    assert during[API_POOL] == ["web-1-nic", "web-2-nic"]
    status = agent.status()
    assert status["vm"]["in_rotation"] is False
    removed = {
        (r["resource_id"].rsplit("/", 1)[-1], r["target"], r["status"]) for r in status["vm"]["removed"]
    }
    assert removed == {
        ("web-0-nic", WEB_POOL, "on-nic"),
        ("web-0-nic", API_POOL, "on-nic"),
        ("web-0-nic2", WEB_POOL, "on-nic"),
    }
    # Every write carried the etag it was based on: the intent on each NIC (the fleet's floor), then
    # the drain of each.
    writes = topology.arm_writes()
    assert len(writes) == 4 and all(w["if_match"] for w in writes)
    # No NIC was touched but this VM's.
    assert {w["name"] for w in writes} == {"web-0-nic", "web-0-nic2"}

    topology.remove(event_id)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert topology.membership() == before
    assert _pools(topology, "web-0-nic") == nic1_before
    assert _pools(topology, "web-0-nic2") == nic2_before
    status = agent.status()
    assert status["vm"]["in_rotation"] is True
    assert status["vm"]["removed"] == []


def test_a_concurrent_change_to_the_nic_is_kept(agent: Agent, topology: EmulatorControl) -> None:
    topology.add_load_balancer("lb-other", pools=["other-pool"])
    other_pool = f"{RG}/loadBalancers/lb-other/backendAddressPools/other-pool"
    event_id = _drain_then_restore(agent, topology)
    # While drained, someone adds a tag and another pool to the NIC.
    topology.concurrent_change("web-0-nic", tag=("owner", "team-a"), add_pool=("ipconfig1", other_pool))
    topology.nic("web-0-nic")  # the control read does not trigger it
    topology.remove(event_id)
    assert agent.check().returncode == 0
    nic = topology.nic("web-0-nic")
    assert nic["tags"] == {"owner": "team-a"}
    assert _pools(topology, "web-0-nic") == sorted([WEB_POOL, API_POOL, other_pool])


def test_412_is_re_read_and_retried_keeping_the_other_writer(agent: Agent, topology: EmulatorControl) -> None:
    # Between our GET and our PUT, someone else writes the NIC: our PUT gets 412. (No floor: the
    # drain's own read is the NIC's first.)
    agent.config_text = NO_FLOOR
    topology.concurrent_change("web-0-nic", tag=("changed-by", "someone"))
    topology.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    statuses = [r["status"] for r in _arm_requests(topology) if r["method"] == "PUT"]
    assert 412 in statuses
    assert statuses[-1] == 200
    nic = topology.nic("web-0-nic")
    assert {k: v for k, v in nic["tags"].items() if not k.startswith("drainer")} == {"changed-by": "someone"}
    assert _pools(topology, "web-0-nic") == []
    assert any("412" in r.get("event", "") for r in log_records(done.stderr))


def test_a_pool_written_by_the_whole_set_survives_many_conflicts(
    agent: Agent, control: EmulatorControl
) -> None:
    # Issue 19: 20 VMs on admin-state writing one pool at once; some drains failed "kept changing"
    # after 5 conflicts. Conflicts are now retried after a jittered back-off, 8 times.
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.add_ip_member("lb-ip", "ip-pool", vm)
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "admin-state"\n'
    # Five other VMs' writes land between each of our reads of the pool and our write.
    control.fault(match="backendAddressPools/ip-pool$", method="PUT", status=412, count=5)
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    puts = [r for r in control.requests() if r["method"] == "PUT" and r["path"].endswith("/ip-pool")]
    assert [r["status"] for r in puts] == ["fault"] * 5 + [200]
    pool_id = f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"
    assert control.membership()[pool_id][0] == "ip=10.0.0.4 (Down)"


def test_429_with_retry_after_is_honoured(agent: Agent, topology: EmulatorControl) -> None:
    topology.fault(
        match="networkInterfaces/web-0-nic$",
        method="PUT",
        status=429,
        count=1,
        retry_after="1",
        body='{"error": {"code": "RetryableError", "message": "A retryable error occurred."}}',
    )
    topology.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    puts = [r for r in _arm_requests(topology) if r["method"] == "PUT" and r["path"].endswith("web-0-nic")]
    assert [p["status"] for p in puts] == ["fault", 200, 200]  # the intent, retried; the drain
    assert puts[1]["at"] - puts[0]["at"] >= 0.9
    assert _pools(topology, "web-0-nic") == []


def test_retry_after_beyond_the_deadline_fails_fast_and_is_retried_next_run(
    agent: Agent, topology: EmulatorControl
) -> None:
    agent.config_text = DEFAULT_CONFIG.replace("deadline = 20.0", "deadline = 3.0")
    topology.fault(match="networkInterfaces/web-0-nic$", method="PUT", status=429, count=1, retry_after="600")
    topology.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    assert "deadline" in done.stderr
    assert agent.status()["vm"]["drain_state"] == "draining"
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "drained"


def test_lro_failure_then_success_on_the_next_run(agent: Agent, topology: EmulatorControl) -> None:
    # web-0 has two NICs written concurrently: name the one that fails, or either may.
    topology.fail_next_lro(1, nic="web-0-nic")
    topology.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    assert "write NIC web-0-nic failed: the operation failed: InternalServerError" in done.stderr
    status = agent.status()
    assert status["vm"]["drain_state"] == "draining"
    assert status["vm"]["attempts"] == 1
    assert _pools(topology, "web-0-nic") == sorted([WEB_POOL, API_POOL])  # the failed write did nothing
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert _pools(topology, "web-0-nic") == []


def test_a_deleted_pool_is_skipped_on_restore_once_confirmed_gone(
    agent: Agent, topology: EmulatorControl
) -> None:
    agent.config_text = DEFAULT_CONFIG + "\n[drain]\ngone_after_reads = 2\ngone_after_seconds = 0\n"
    event_id = _drain_then_restore(agent, topology)
    topology.delete_pool("lb-web", "api-pool")
    topology.remove(event_id)
    done = agent.check()
    assert done.returncode == 1, done.stderr  # one 404 proves nothing: incomplete, retried
    assert _pools(topology, "web-0-nic") == [WEB_POOL]
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert _pools(topology, "web-0-nic") == [WEB_POOL]
    assert any(
        r["event"] == "backend pool confirmed gone: dropped from the restore"
        for r in log_records(done.stderr)
    )
    assert agent.status()["vm"]["removed"] == []
    assert agent.check().returncode == 0  # nothing left to retry


@pytest.mark.parametrize("point", ["nic-recorded", "nic-written"])
def test_crash_inside_the_drain_converges(agent: Agent, topology: EmulatorControl, point: str) -> None:
    before = topology.membership()
    event_id = topology.schedule("Reboot", ["web-0"])
    assert agent.check(TEST_CRASH_AT=point).returncode == CRASH_EXIT
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert _pools(topology, "web-0-nic") == []
    assert _pools(topology, "web-0-nic2") == []
    topology.remove(event_id)
    assert agent.check().returncode == 0
    assert topology.membership() == before


def test_crash_inside_the_restore_converges(agent: Agent, topology: EmulatorControl) -> None:
    before = topology.membership()
    event_id = _drain_then_restore(agent, topology)
    topology.remove(event_id)
    assert agent.check(TEST_CRASH_AT="nic-restored").returncode == CRASH_EXIT
    assert agent.check().returncode == 0
    assert topology.membership() == before
    assert agent.status()["vm"]["removed"] == []


def test_dry_run_reads_but_makes_no_write(agent: Agent, topology: EmulatorControl) -> None:
    before = topology.membership()
    topology.schedule("Reboot", ["web-0"])
    done = agent.check("--dry-run")
    assert done.returncode == 0, done.stderr
    would = [r for r in log_records(done.stderr) if r["event"] == "dry-run: would write NIC"]
    assert {r["nic"] for r in would} == {"web-0-nic", "web-0-nic2"}
    assert all(r["if_match"] for r in would)
    assert topology.arm_writes() == []
    assert not [r for r in _arm_requests(topology) if r["method"] != "GET"]
    assert topology.membership() == before
    assert agent.status()["vm"]["in_rotation"] is True


def test_idle_run_makes_no_arm_call(agent: Agent, topology: EmulatorControl) -> None:
    assert agent.check().returncode == 0  # the first run reconciles (the local state is new)
    seen = len(_arm_requests(topology))
    tokens = len([r for r in topology.requests() if "identity" in r["path"]])
    assert seen > 0
    assert agent.check().returncode == 0
    topology.schedule("Reboot", ["web-1"])  # another VM's event: still nothing for us to do
    assert agent.check().returncode == 0
    assert len(_arm_requests(topology)) == seen
    assert len([r for r in topology.requests() if "identity" in r["path"]]) == tokens


def test_min_in_service_holds_the_drain(agent: Agent, control: EmulatorControl) -> None:
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1"])
    agent.config_text = DEFAULT_CONFIG + "\n[drain]\nmin_in_service = 2\n"
    event_id = control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    status = agent.status()
    assert status["vm"]["held"] and "min_in_service=2" in status["vm"]["held"]
    assert status["vm"]["drain_state"] == "draining"
    assert _pools(control, "web-0-nic") == [WEB_POOL]  # still serving
    assert control.arm_writes() == []  # the pool alone holds it: not even an intent
    assert "IN rotation (draining, held: lb-web/web-pool: 1 other member(s)" in agent.run("status").stdout
    # Retried every run; once another member joins the pool, the drain goes ahead.
    control.join("web-2", "lb-web", "web-pool")
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert agent.status()["vm"]["held"] is None
    control.remove(event_id)
    assert agent.check().returncode == 0
    assert _pools(control, "web-0-nic") == [WEB_POOL]


def test_a_held_drain_reads_only_its_nic_and_pool_on_each_retry(
    agent: Agent, control: EmulatorControl
) -> None:
    # Issue 19: a held VM listed its resource group's NICs on every retry (8 a minute).
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1"])
    agent.config_text = DEFAULT_CONFIG + "\n[drain]\nmin_in_service = 2\n"
    control.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["held"]
    mark = len(control.requests())
    for _ in range(3):
        assert agent.check().returncode == 0
    reads = [
        r["path"].rsplit("/providers/", 1)[1] for r in control.requests()[mark:] if "/providers/" in r["path"]
    ]
    assert (
        reads
        == ["Microsoft.Network/networkInterfaces/web-0-nic", "Microsoft.Network/loadBalancers/lb-web"] * 3
    )


def test_preempt_drains_even_below_min_in_service(agent: Agent, control: EmulatorControl) -> None:
    control.load_balancer_with("lb-web", "web-pool", ["web-0"])
    control.schedule("Preempt", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert any("below the pool's floor" in r["event"] for r in log_records(done.stderr))


def test_manual_drain_is_not_undone_by_maintenance(agent: Agent, topology: EmulatorControl) -> None:
    before = topology.membership()
    done = agent.run("drain")
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["manual"] is True
    assert _pools(topology, "web-0-nic") == []
    event_id = topology.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    topology.remove(event_id)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is False  # the event cleared; the manual hold stays
    event_id = topology.schedule("Redeploy", ["web-0"])
    assert agent.check().returncode == 0
    released = agent.run("restore")
    assert released.returncode == 0
    assert "stays out" in released.stderr  # the Redeploy still holds it
    assert agent.status()["vm"]["in_rotation"] is False
    topology.remove(event_id)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True
    assert topology.membership() == before


def test_application_gateway_pools_when_configured(agent: Agent, topology: EmulatorControl) -> None:
    topology.add_app_gateway("agw", ["agw-pool"])
    agw_pool = f"{RG}/applicationGateways/agw/backendAddressPools/agw-pool"
    topology.join_app_gateway("web-0", agw_pool)
    topology.join_app_gateway("web-1", agw_pool)  # min_in_service holds in gateway pools too
    agent.config_text = DEFAULT_CONFIG + "\n[drain]\napplication_gateways = true\n"
    event_id = _drain_then_restore(agent, topology)
    nic = topology.nic("web-0-nic")
    assert (
        nic["properties"]["ipConfigurations"][0]["properties"]["applicationGatewayBackendAddressPools"] == []
    )
    topology.remove(event_id)
    assert agent.check().returncode == 0
    nic = topology.nic("web-0-nic")
    refs = nic["properties"]["ipConfigurations"][0]["properties"]["applicationGatewayBackendAddressPools"]
    assert [r["id"] for r in refs] == [agw_pool]


def test_named_nics_skip_discovery(agent: Agent, topology: EmulatorControl) -> None:
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nnics = ["web-0-nic2"]\n'
    _drain_then_restore(agent, topology)
    assert _pools(topology, "web-0-nic2") == []
    assert _pools(topology, "web-0-nic") == sorted([WEB_POOL, API_POOL])  # not named: untouched
    assert not [r for r in _arm_requests(topology) if r["path"].endswith("/networkInterfaces")]


def test_nics_come_from_the_vm_resource_once_per_boot(
    agent: Agent, topology: EmulatorControl, tmp_path: Path
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    agent.extra_env["TEST_BOOT_ID_FILE"] = str(boot)
    event_id = _drain_then_restore(agent, topology)
    topology.remove(event_id)
    assert agent.check().returncode == 0
    event_id = _drain_then_restore(agent, topology)
    topology.remove(event_id)
    assert agent.check().returncode == 0

    def vm_reads() -> int:
        return len([r for r in _arm_requests(topology) if r["path"].endswith("/virtualMachines/web-0")])

    assert vm_reads() == 1  # two drains, two restores: one read of the VM resource
    assert not [r for r in _arm_requests(topology) if r["path"].endswith("/networkInterfaces")]  # no list
    # A NIC is attached only while the VM is stopped (deallocated): it comes with a new boot.
    topology.add_nic("web-0", "web-0-nic3")
    topology.join("web-0", "lb-web", "web-pool", nic="web-0-nic3")
    boot.write_text("boot-2\n")
    _drain_then_restore(agent, topology)
    assert vm_reads() == 2
    assert _pools(topology, "web-0-nic3") == []


def test_uniform_scale_set_instance_gets_a_clear_message(agent: Agent, control: EmulatorControl) -> None:
    control._call("POST", "vms", {"name": "vmss_3", "scale_set": "vmss", "uniform": True})
    agent.vm = "vmss_3"
    control.schedule("Reboot", ["vmss_3"])
    done = agent.check()
    assert done.returncode == 1
    assert "Uniform" in done.stderr and "admin-state" in done.stderr
    assert "Traceback" not in done.stderr


def test_arm_errors_surface_their_text(agent: Agent, topology: EmulatorControl) -> None:
    message = (
        "The client has permission to perform action 'Microsoft.Network/networkInterfaces/write' on scope "
        "'web-0-nic', however it does not have permission to perform action "
        "'Microsoft.Network/loadBalancers/backendAddressPools/join/action' on the linked scope(s)."
    )
    topology.fault(
        match="networkInterfaces/web-0-nic$",
        method="PUT",
        status=403,
        count=1,
        body='{"error": {"code": "LinkedAuthorizationFailed", "message": "' + message + '"}}',
    )
    topology.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    assert "LinkedAuthorizationFailed" in done.stderr
    assert "join/action" in agent.status()["vm"]["last_error"]
    assert agent.check().returncode == 0  # the fault is gone: the retry drains


def test_tokens_come_from_imds_without_proxy_and_never_reach_the_log(
    agent: Agent, topology: EmulatorControl
) -> None:
    topology.schedule("Reboot", ["web-0"])
    # IMDS is reached as "localhost", ARM as 127.0.0.1: the proxy variables apply to IMDS only.
    imds = agent.emulator.vm_url("web-0").replace("127.0.0.1", "localhost")
    done = agent.check(
        DRAINER_IMDS_ENDPOINT=imds,
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1",
    )
    assert done.returncode == 0, done.stderr
    token_requests = [r for r in topology.requests() if r["path"] == "/metadata/identity/oauth2/token"]
    assert token_requests and all(r["metadata"] == "true" for r in token_requests)
    assert all(r["authorization"] for r in _arm_requests(topology))
    assert "emulator." not in done.stderr  # the emulator's tokens all start with "emulator."


def test_admin_state_drain_and_restore(agent: Agent, control: EmulatorControl) -> None:
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.add_ip_member("lb-ip", "ip-pool", vm)
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "admin-state"\n'
    event_id = control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    pool_id = f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"
    assert control.membership()[pool_id] == ["ip=10.0.0.4 (Down)", "ip=10.0.0.5 (None)", "ip=10.0.0.6 (None)"]
    (removed,) = agent.status()["vm"]["removed"]
    assert removed["method"] == "admin-state" and removed["target"] == "None"
    control.remove(event_id)
    assert agent.check().returncode == 0
    assert control.membership()[pool_id] == ["ip=10.0.0.4 (None)", "ip=10.0.0.5 (None)", "ip=10.0.0.6 (None)"]


def test_admin_state_on_a_scale_set_uniform_instance(agent: Agent, control: EmulatorControl) -> None:
    # Its VM resource is virtualMachineScaleSets/vmss/virtualMachines/3, and its NIC lives under it
    # (read through the scale-set NIC API, never written: the record is kept locally).
    control.add_vm("vmss_3", "vmss", uniform=True)
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for vm in ("web-0", "vmss_3"):
        control.add_ip_member("lb-ip", "ip-pool", vm)
    agent.vm = "vmss_3"
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "admin-state"\n'
    event_id = control.schedule("Reboot", ["vmss_3"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    pool_id = f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"
    assert control.membership()[pool_id] == ["ip=10.0.0.4 (None)", "ip=10.0.0.7 (Down)"]
    paths = [r["path"] for r in _arm_requests(control)]
    assert any(p.endswith("/virtualMachineScaleSets/vmss/virtualMachines/3") for p in paths)
    assert not [
        r for r in _arm_requests(control) if "/networkInterfaces" in r["path"] and r["method"] != "GET"
    ]
    control.remove(event_id)
    assert agent.check().returncode == 0
    assert control.membership()[pool_id] == ["ip=10.0.0.4 (None)", "ip=10.0.0.7 (None)"]


def test_admin_state_refuses_a_pool_without_health_probe(agent: Agent, control: EmulatorControl) -> None:
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"], probe=False)
    control.add_ip_member("lb-ip", "ip-pool", "web-0")
    control.add_ip_member("lb-ip", "ip-pool", "web-1")
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "admin-state"\n'
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    assert "no health probe" in done.stderr
    assert control.arm_writes() == []


def test_admin_state_refuses_a_basic_load_balancer(agent: Agent, control: EmulatorControl) -> None:
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"], sku="Basic")
    control.add_ip_member("lb-ip", "ip-pool", "web-0")
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "admin-state"\nmin_in_service = 0\n'
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    assert "Standard load balancer" in done.stderr


def test_retryable_error_due_to_another_operation_waits_as_told(
    agent: Agent, topology: EmulatorControl
) -> None:
    # Azure sends this as a 429 without a Retry-After header; the wait is in the message.
    body = (
        '{"error": {"code": "RetryableError", "message": "A retryable error occured.", "details": '
        '[{"code": "RetryableErrorDueToAnotherOperation", "message": "Operation X is updating resource Y. '
        'The call can be retried in 1 seconds."}]}}'
    )
    topology.fault(match="networkInterfaces/web-0-nic$", method="PUT", status=429, count=1, body=body)
    topology.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    puts = [r for r in _arm_requests(topology) if r["method"] == "PUT" and r["path"].endswith("web-0-nic")]
    assert [p["status"] for p in puts] == ["fault", 200, 200]  # the intent, retried; the drain
    assert puts[1]["at"] - puts[0]["at"] >= 0.9


def test_server_errors_are_retried_within_the_action(agent: Agent, topology: EmulatorControl) -> None:
    topology.fault(match="loadBalancers/lb-web", method="GET", status=500, count=2)
    topology.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "drained"
