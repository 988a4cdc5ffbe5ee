"""The emulator's etags on load balancers are Azure's, driven by the real azure-mgmt-network client: a
backend pool carries its load balancer's etag (every child of a load balancer does, in the recorded
SDK session sdk/network/azure-mgmt-network/tests/recordings/test_mgmt_network.test_load_balancers.yaml
of Azure/azure-sdk-for-python), so a write to one pool stales its siblings: a PUT of a sibling with
the etag read before it fails with 412, as on Azure."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import NetworkManagementClient

from drainer.emulator.control import EmulatorControl
from tests.test_emulator_tags import RG, client

__all__ = ["client"]  # the fixture, re-used


def _put_pool(client: NetworkManagementClient, name: str, pool: Any) -> Any:
    return client.load_balancer_backend_address_pools.begin_create_or_update(
        RG,
        "lb-ip",
        name,
        pool,
        headers={"If-Match": pool.etag},  # as drainer sends it (the REST spec declares no If-Match here)
        enforce_https=False,
    ).result()


def test_a_pool_carries_its_load_balancers_etag_and_a_sibling_write_stales_it(
    client: NetworkManagementClient, control: EmulatorControl
) -> None:
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["pool-a", "pool-b"])
    control.add_ip_member("lb-ip", "pool-a", "web-0")
    control.add_ip_member("lb-ip", "pool-b", "web-1")
    lb = client.load_balancers.get(RG, "lb-ip", enforce_https=False)
    assert {p.etag for p in lb.backend_address_pools} == {lb.etag}
    a = client.load_balancer_backend_address_pools.get(RG, "lb-ip", "pool-a", enforce_https=False)
    b = client.load_balancer_backend_address_pools.get(RG, "lb-ip", "pool-b", enforce_https=False)
    assert a.etag == b.etag == lb.etag
    a.load_balancer_backend_addresses[0].admin_state = "Down"
    written = _put_pool(client, "pool-a", a)
    after = client.load_balancers.get(RG, "lb-ip", enforce_https=False)
    assert written.etag == after.etag != lb.etag
    assert {p.etag for p in after.backend_address_pools} == {after.etag}
    # pool-b was read before pool-a was written: its etag is stale now.
    b.load_balancer_backend_addresses[0].admin_state = "Down"
    with pytest.raises(HttpResponseError) as refused:
        _put_pool(client, "pool-b", b)
    assert refused.value.status_code == 412
    assert refused.value.error is not None and refused.value.error.code == "PreconditionFailed"
    fresh = client.load_balancer_backend_address_pools.get(RG, "lb-ip", "pool-b", enforce_https=False)
    fresh.load_balancer_backend_addresses[0].admin_state = "Down"
    assert _put_pool(client, "pool-b", fresh).load_balancer_backend_addresses[0].admin_state == "Down"
