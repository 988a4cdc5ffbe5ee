"""Second adversarial review of "Where the truth lives" (README): the write-ahead local copy, the
admin-state record, the daemon, manual holds and approvals across crashes and state loss. Each test
fails against the code it was written for.

Second round: each test here failed before its fix. Breaks accepted as limits (README) were taken out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import Agent
from tests.test_attack_truth import set_tags
from tests.test_truth import API_POOL, CONFIG, RG, WEB_POOL, ok, pools_of, tagged, two_pools

__all__ = ["tagged", "two_pools"]  # fixtures re-used from tests/test_truth.py

ROOT = Path(__file__).resolve().parent.parent
ADMIN_POOL = f"{RG}/loadBalancers/lb-ip/backendAddressPools/ip-pool"


def test_a_run_killed_before_the_nic_write_makes_a_later_restore_add_a_pool_drainer_never_removed(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Killed at nic-recorded (before the PUT, tags accepted): the write-ahead copy survives; an
    operator then takes the NIC out of api-pool and the restore puts it back."""
    event_id = two_pools.schedule("Reboot", ["web-0"])
    assert tagged.check(TEST_CRASH_AT="nic-recorded").returncode == 137
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])  # nothing changed
    two_pools.leave("web-0", "lb-web", "api-pool")  # the operator's decision
    ok(tagged.check())  # drains what is left: web-pool
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]


def admin_setup(agent: Agent, control: EmulatorControl) -> None:
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.add_ip_member("lb-ip", "ip-pool", vm, name=f"{vm}-addr")
    agent.config_text = CONFIG + 'method = "admin-state"\n'


NIC_WRITE_FORBIDDEN = json.dumps(
    {
        "error": {
            "code": "AuthorizationFailed",
            "message": "The client '00000000-0000-0000-0000-000000000001' with object id "
            "'00000000-0000-0000-0000-000000000001' does not have authorization to perform action "
            "'Microsoft.Network/networkInterfaces/write' over scope "
            "'/subscriptions/8d10da13-8125-4ba9-a717-bf7490507b3d/resourceGroups/rg-drainer/providers/"
            "Microsoft.Network/networkInterfaces/web-0-nic' or the scope is invalid. If access was "
            "recently granted, please refresh your credentials.",
        }
    }
)


APPROVING = CONFIG.replace("enabled = false", "enabled = true\npeer_check_interval = 0")


def test_state_loss_while_drained_lets_the_vm_approve_while_a_listed_peer_still_serves(
    tagged: Agent, two_pools: EmulatorControl, emulator: RunningEmulator
) -> None:
    """After rm -rf state, the peer check reads an empty ledger: web-0 approves the shared event
    while web-1, listed in it and in the same pools, is still in rotation."""
    tagged.config_text = APPROVING
    event_id = two_pools.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    assert two_pools.state()["approvals"] == []  # web-1 still serves from the shared pools
    shutil.rmtree(tagged.state_dir)
    ok(tagged.check())
    assert pools_of(two_pools, "web-1-nic") == sorted([WEB_POOL, API_POOL])
    assert [a["event_id"] for a in two_pools.state()["approvals"]] == []
    assert event_id


def test_a_crash_after_the_nic_write_turns_a_tagged_nic_local_and_a_later_pool_is_lost_with_state(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Killed at nic-written: a later re-drain marks the write-ahead copy 'removed' (local) although
    the record is on the NIC; the NIC then counts as local, the next pool drained is recorded only in
    the state, and rm -rf state loses it."""
    other = f"{RG}/loadBalancers/lb-other/backendAddressPools/other-pool"
    third = f"{RG}/loadBalancers/lb-other/backendAddressPools/third-pool"
    two_pools.add_load_balancer("lb-other", pools=["other-pool", "third-pool"])
    two_pools.join("web-1", "lb-other", "third-pool")
    two_pools.join("web-1", "lb-other", "other-pool")
    two_pools.join("web-2", "lb-other", "other-pool")
    event_id = two_pools.schedule("Reboot", ["web-0"])
    assert tagged.check(TEST_CRASH_AT="nic-written").returncode == 137
    ok(tagged.check())  # the drain completes: already out, the record is on the NIC
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.join("web-0", "lb-other", "other-pool")  # the operator, during the maintenance
    ok(tagged.check(TEST_CLOCK_OFFSET="400"))  # the active reconcile takes it out again
    assert pools_of(two_pools, "web-0-nic") == []
    # The leftover copies were compared with the NIC's record decoded without its subscription: the
    # record's pools are now taken for local ones, and the NIC for one whose record lives here.
    two_pools.join("web-0", "lb-other", "third-pool")  # once more
    ok(tagged.check(TEST_CLOCK_OFFSET="800"))
    assert pools_of(two_pools, "web-0-nic") == []
    shutil.rmtree(tagged.state_dir)
    two_pools.remove(event_id)
    ok(tagged.check(TEST_CLOCK_OFFSET="800"))
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL, other, third])


def test_a_failed_drain_operation_leaves_a_copy_that_makes_the_restore_add_an_operators_removed_pool(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """The NIC PUT's operation fails (nothing applied, no crash): the write-ahead copy stays; the event
    is cancelled, an operator takes the NIC out of api-pool, and the restore puts it back."""
    event_id = two_pools.schedule("Reboot", ["web-0"])
    two_pools.fail_next_lro(1)
    assert tagged.check().returncode == 1
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])  # nothing changed
    two_pools.remove(event_id)  # cancelled before any retry
    two_pools.leave("web-0", "lb-web", "api-pool")  # the operator's decision
    tagged.check()
    tagged.check()
    assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]


def set_admin_state(emulator: RunningEmulator, address: str, value: str) -> None:
    """An operator sets one backend address's admin state in lb-ip/ip-pool."""
    arm = emulator.model.arm
    with arm.lock:
        for item in arm._pool("lb-ip", "ip-pool")["properties"]["loadBalancerBackendAddresses"]:
            if item["name"] == address:
                item["properties"]["adminState"] = value


def test_admin_state_refused_first_pool_leaves_the_record_of_a_pool_never_written(
    tagged: Agent, control: EmulatorControl, emulator: RunningEmulator
) -> None:
    """Two IP-based pools: the first pool PUT is refused (409), so the second is never written, yet
    its record stays; after the cancel the restore sets 'None' on the operator's Down there."""
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["pool-a", "pool-b"])
    for pool in ("pool-a", "pool-b"):
        for vm in ("web-0", "web-1", "web-2"):
            control.add_ip_member("lb-ip", pool, vm, name=f"{vm}-{pool}")
    tagged.config_text = CONFIG + 'method = "admin-state"\n'
    event_id = control.schedule("Reboot", ["web-0"])
    control.fault(match="/loadBalancers/lb-ip/backendAddressPools/pool-a", status=409, count=1, method="PUT")
    assert tagged.check().returncode == 1
    membership = control.membership()
    assert all(
        "ip=10.0.0.4 (None)" in membership[f"{RG}/loadBalancers/lb-ip/backendAddressPools/{p}"]
        for p in ("pool-a", "pool-b")
    )  # neither pool was changed
    control.remove(event_id)
    arm = emulator.model.arm
    with arm.lock:  # the operator's own decision on the second pool
        for item in arm._pool("lb-ip", "pool-b")["properties"]["loadBalancerBackendAddresses"]:
            if item["name"] == "web-0-pool-b":
                item["properties"]["adminState"] = "Down"
    tagged.check()
    tagged.check()
    assert (
        "ip=10.0.0.4 (Down)" in control.membership()[f"{RG}/loadBalancers/lb-ip/backendAddressPools/pool-b"]
    )


def test_a_stale_404_count_from_an_earlier_maintenance_lets_one_404_drop_the_pools(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    """Two 404s on lb-web in one restore, finished by an operator re-adding the NIC: the count is never
    cleared; a day later, in the next maintenance, one 404 confirms lb-web gone and drops its pools."""
    tagged.config_text = CONFIG.replace("gone_after_seconds = 0", "gone_after_seconds = 300")
    lb_404 = {"match": "/loadBalancers/lb-web", "status": 404, "count": 1, "method": "GET"}
    first = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    two_pools.remove(first)
    two_pools.fault(**lb_404)
    assert tagged.check().returncode == 1  # incomplete: lb-web answered 404 (once)
    two_pools.fault(**lb_404)
    assert tagged.check(TEST_CLOCK_OFFSET="60").returncode == 1  # and once more
    two_pools.join("web-0", "lb-web", "web-pool")  # an impatient operator puts the VM back by hand
    two_pools.join("web-0", "lb-web", "api-pool")
    ok(tagged.check(TEST_CLOCK_OFFSET="120"))  # nothing left to put back: the restore is done
    assert tagged.status()["vm"]["in_rotation"] is True
    second = two_pools.schedule("Reboot", ["web-0"])  # the next maintenance, a day later
    ok(tagged.check(TEST_CLOCK_OFFSET="86400"))
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(second)
    two_pools.fault(**lb_404)  # one transient 404
    done = tagged.check(TEST_CLOCK_OFFSET="86400")
    assert "confirmed gone: dropped" not in done.stderr
    tagged.check(TEST_CLOCK_OFFSET="86460")
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_a_tag_named_drainer_set_before_any_drain_is_deleted_by_the_restore(
    tagged: Agent, two_pools: EmulatorControl, emulator: RunningEmulator
) -> None:
    """An operator's own tag ``drainer = managed`` (e.g. marking the fleet) existed before drainer
    wrote anything: the drain overwrites it with the summary and the restore deletes it."""
    set_tags(emulator, "web-0-nic", {"drainer": "managed"})
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert two_pools.nic("web-0-nic").get("tags") == {"drainer": "managed"}


def applied_then_500(emulator: RunningEmulator, nic: str) -> None:
    """The next PUT of ``nic`` is applied, but its answer is a 500 (the front end failed after the
    write): the SDK retries the PUT with the same If-Match."""
    from drainer.emulator.arm_model import ArmError as EmulatorArmError

    arm = emulator.model.arm
    original = arm.put_nic
    fired: list[bool] = []

    def put_nic(name: str, body: dict[str, object], if_match: str | None) -> object:
        answer = original(name, body, if_match)
        if name.lower() == nic.lower() and not fired:
            fired.append(True)
            raise EmulatorArmError(500, "InternalServerError", "An error occurred.")
        return answer

    arm.put_nic = put_nic  # type: ignore[method-assign,assignment]


def test_a_tag_policy_nic_whose_applied_drain_write_is_retried_into_a_412_loses_its_only_record(
    tagged: Agent, two_pools: EmulatorControl, emulator: RunningEmulator
) -> None:
    """Tags stripped by a policy: the drain PUT applies but answers 500, the SDK's retry gets 412,
    drainer forgets the write-ahead copy as 'refused', and nothing records the removed pools."""
    two_pools.arm_settings(tag_policy="strip")
    applied_then_500(emulator, "web-0-nic")
    event_id = two_pools.schedule("Reboot", ["web-0"])
    tagged.check()
    tagged.check()
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    tagged.check()
    tagged.check()
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
