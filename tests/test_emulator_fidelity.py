"""The emulator behaves as Azure documents it where drainer's decisions depend on it (issue 19):

- an approval may not start the event at once: Azure can wait for every VM on the host node;
- every generally available Scheduled Events api-version is served (2019-04-01 included), each with
  its own fields;
- a VM resource (Microsoft.Compute) lists its NICs, as the spec's examples show, for a VM and for a
  scale-set Uniform instance (whose NICs live under the Compute provider);
- the members of a NIC-based pool carry an ``adminState`` that can be set with a pool PUT.

Driven over HTTP (requests for IMDS, the real azure-mgmt-network client for ARM).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.rest import HttpRequest
from azure.mgmt.network import NetworkManagementClient

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import DATA
from tests.test_emulator_tags import RG, SUB, _EmulatorToken


def _approve(emulator: RunningEmulator, vm: str, event_id: str) -> None:
    answer = requests.post(
        f"{emulator.vm_url(vm)}/metadata/scheduledevents",
        params={"api-version": "2020-07-01"},
        headers={"Metadata": "true"},
        data=json.dumps({"StartRequests": [{"EventId": event_id}]}),
        timeout=5,
    )
    assert answer.status_code == 200


def _status(control: EmulatorControl, event_id: str) -> str:
    return next(str(e["EventStatus"]) for e in control.state()["events"] if e["EventId"] == event_id)


def test_an_approval_starts_the_event_at_once_when_the_vm_has_its_node_alone(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    event_id = control.schedule("Reboot", ["web-0"], not_before_in=900)
    _approve(emulator, "web-0", event_id)
    assert _status(control, event_id) == "Started"


def test_an_approval_waits_for_every_vm_on_the_node(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    # Microsoft Learn, Scheduled Events, "Start an event": "The event may not start immediately upon
    # approval. In some cases Azure requires the approval of all the VMs hosted on the node before
    # proceeding with the event."
    control.share_node("node-1", ["web-0", "web-1"])
    mine = control.schedule("Reboot", ["web-0"], not_before_in=900)
    theirs = control.schedule("Reboot", ["web-1"], not_before_in=900)  # another set, the same host
    _approve(emulator, "web-0", mine)
    assert _status(control, mine) == "Scheduled"
    _approve(emulator, "web-0", mine)  # approving again changes nothing
    assert _status(control, mine) == "Scheduled"
    _approve(emulator, "web-1", theirs)
    assert _status(control, mine) == "Started"
    assert _status(control, theirs) == "Started"


def test_an_event_listing_every_vm_of_the_node_starts_with_one_approval(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    # "Acknowledging an event allows the event to proceed for all Resources in the event".
    control.share_node("node-1", ["web-0", "web-1"])
    event_id = control.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    _approve(emulator, "web-1", event_id)
    assert _status(control, event_id) == "Started"


def test_an_approved_event_starts_when_the_other_vms_event_reaches_not_before(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    control.share_node("node-1", ["web-0", "web-1"])
    mine = control.schedule("Reboot", ["web-0"], not_before_in=900)
    theirs = control.schedule("Reboot", ["web-1"], not_before_in=900)
    _approve(emulator, "web-0", mine)
    control.start(theirs)  # its NotBefore passed: the platform starts it without an approval
    control.state()  # the emulator moves on when asked
    assert _status(control, mine) == "Started"


@pytest.mark.parametrize(
    ("version", "fields"),
    [
        ("2019-01-01", set()),
        ("2019-04-01", {"Description"}),  # "Added support for Event Description"
        ("2019-08-01", {"Description", "EventSource"}),
        ("2020-07-01", {"Description", "EventSource", "DurationInSeconds"}),
    ],
)
def test_every_generally_available_api_version_is_served(
    emulator: RunningEmulator, control: EmulatorControl, version: str, fields: set[str]
) -> None:
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    answer = requests.get(
        f"{emulator.vm_url('web-0')}/metadata/scheduledevents",
        params={"api-version": version},
        headers={"Metadata": "true"},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    (event,) = answer.json()["Events"]
    optional = {"Description", "EventSource", "DurationInSeconds"}
    assert optional & set(event) == fields


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[NetworkManagementClient]:
    network = NetworkManagementClient(
        _EmulatorToken(emulator),  # type: ignore[arg-type]
        SUB,
        base_url=emulator.url,
        credential_scopes=[emulator.url + "/.default"],
        polling_interval=0.01,
    )
    yield network
    network.close()


def _get(client: NetworkManagementClient, path: str) -> tuple[int, Any]:
    """A raw GET through the SDK's pipeline (what drainer does for the one Compute read it makes)."""
    answer = client.send_request(
        HttpRequest("GET", f"{{endpoint}}{path}", params={"api-version": "2024-07-01"}), enforce_https=False
    )
    return answer.status_code, answer.json()


def _shape(value: Any) -> Any:
    """Keys and value types, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.parametrize(
    ("vm", "example"),
    [
        ("web-0", "compute_spec_2024-07-01_VirtualMachine_Get.json"),
        ("vmss_3", "compute_spec_2024-07-01_VirtualMachineScaleSetVM_Get_WithUserData.json"),
    ],
)
def test_a_vm_resource_lists_its_nics_as_the_spec_shows(
    emulator: RunningEmulator,
    control: EmulatorControl,
    client: NetworkManagementClient,
    vm: str,
    example: str,
) -> None:
    control.add_vm("vmss_3", "vmss", uniform=True)
    spec = json.loads((DATA / example).read_text())["responses"]["200"]["body"]
    resource_id = emulator.model.vm(vm).resource_id  # type: ignore[union-attr]
    status, body = _get(client, resource_id)
    assert status == 200
    assert body["id"] == resource_id and body["type"] == spec["type"]
    profile = body["properties"]["networkProfile"]
    assert (
        _shape(profile)["networkInterfaces"][0]["id"]
        == _shape(spec["properties"]["networkProfile"])["networkInterfaces"][0]["id"]
    )
    (nic,) = profile["networkInterfaces"]
    # Where the NIC lives: the network provider for a VM, under the instance for a Uniform one.
    spec_nic = spec["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
    assert nic["id"].split("/providers/")[1].split("/")[0] == spec_nic.split("/providers/")[1].split("/")[0]
    status, read = _get(client, nic["id"])
    assert status == 200 and read["id"] == nic["id"]


def test_a_vm_that_does_not_exist_answers_404(
    emulator: RunningEmulator, client: NetworkManagementClient
) -> None:
    status, body = _get(
        client, f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/web-9"
    )
    assert status == 404 and body["error"]["code"] == "ResourceNotFound"


def test_admin_state_is_set_on_a_nic_based_pools_member(
    pool: EmulatorControl, client: NetworkManagementClient
) -> None:
    backend = client.load_balancer_backend_address_pools.get(RG, "lb-web", "web-pool", enforce_https=False)
    members = {a.name: a for a in backend.load_balancer_backend_addresses}
    assert len(members) == 3 and all(a.network_interface_ip_configuration.id for a in members.values())
    target = next(a for a in members.values() if "/web-1-nic/" in a.network_interface_ip_configuration.id)
    target.admin_state = "Down"
    client.load_balancer_backend_address_pools.begin_create_or_update(
        RG, "lb-web", "web-pool", backend, enforce_https=False
    ).result()
    after = client.load_balancer_backend_address_pools.get(RG, "lb-web", "web-pool", enforce_https=False)
    states = {a.name: a.admin_state for a in after.load_balancer_backend_addresses}
    assert states[target.name] == "Down"
    assert sorted(next(iter(pool.membership().values()))) == ["web-0-nic", "web-1-nic (Down)", "web-2-nic"]
    # Still a member (the NIC references the pool), but no longer in service.
    assert len(after.backend_ip_configurations) == 3
    pool.leave("web-1", "lb-web", "web-pool")
    pool.join("web-1", "lb-web", "web-pool")
    rejoined = client.load_balancer_backend_address_pools.get(RG, "lb-web", "web-pool", enforce_https=False)
    assert all(a.admin_state in (None, "None") for a in rejoined.load_balancer_backend_addresses)
