"""What both load-balancer drain methods share: resource ids, finding the VM's NICs, the one etag
read-modify-write loop and confirming a resource gone."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.mgmt.network.models import NetworkInterface

from drainer.act.actuator import ActionContext
from drainer.base.errors import ActionError
from drainer.base.instance import InstanceInfo
from drainer.io.arm import ArmError, Network

# 412 retries per resource and action. A pool (admin-state) or the fleet's lease is written by every
# VM of the set: 20 VMs draining in the same second made 5 too few (bench/admin_state_fleet.py).
MAX_CONFLICTS = 8
# After a conflict, wait a random moment of up to CONFLICT_BACKOFF x 2^(conflicts - 1) seconds (at
# most CONFLICT_BACKOFF_MAX) before reading again: writers that collided do not collide again.
CONFLICT_BACKOFF = 0.5
CONFLICT_BACKOFF_MAX = 4.0
T = TypeVar("T")
W = TypeVar("W")


@dataclass(frozen=True)
class ResourceId:
    """The parts of an ARM id: ``/subscriptions/s/resourceGroups/g/providers/ns/type/name[/child/name]``."""

    resource_group: str
    name: str
    child: str = ""

    @classmethod
    def parse(cls, resource_id: str) -> ResourceId:
        """Raises ActionError for something that is not a resource id."""
        parts = resource_id.strip("/").split("/")
        lowered = [p.lower() for p in parts]
        try:
            group = parts[lowered.index("resourcegroups") + 1]
            provider = lowered.index("providers")
            name = parts[provider + 3]
        except (ValueError, IndexError) as exc:
            raise ActionError("parse resource id", f"not an ARM resource id: {resource_id!r}") from exc
        child = parts[provider + 5] if len(parts) > provider + 5 else ""
        return cls(group, name, child)


def same(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


def nic_of(ipconfig_id: str) -> str:
    """The NIC id an ipConfiguration id belongs to."""
    lowered = ipconfig_id.lower()
    cut = lowered.find("/ipconfigurations/")
    return ipconfig_id[:cut] if cut >= 0 else ipconfig_id


def vnet_of(subnet_id: str) -> str:
    """The virtual network id a subnet id belongs to."""
    lowered = subnet_id.lower()
    cut = lowered.find("/subnets/")
    return (subnet_id[:cut] if cut >= 0 else subnet_id).lower()


def discover_nics(network: Network, ctx: ActionContext) -> list[str]:
    """The VM's NICs: named in the config, else the ``networkProfile`` of its VM resource (one small
    Microsoft.Compute GET, for a scale-set Uniform instance too), read once per boot and kept
    (``ctx.nic_ids``): a NIC is attached to or detached from a VM only while it is stopped
    (deallocated) (Microsoft Learn, "Add network interfaces to or remove network interfaces from
    virtual machines"), so a NIC attached later comes with a new boot and is read then. A retry of a
    held drain reads nothing again.

    Raises ActionError when none is found, ArmError when the read fails (404: the VM resource is not
    where instance metadata says).
    """
    vm = ctx.vm
    if ctx.config.drain.nics:
        return [
            n
            if n.startswith("/")
            else f"/subscriptions/{vm.subscription_id}/resourceGroups/"
            f"{vm.resource_group}/providers/Microsoft.Network/networkInterfaces/{n}"
            for n in ctx.config.drain.nics
        ]
    found = ctx.nic_ids.get(vm.resource_id)
    if found:
        return found
    found = sorted(network.get_vm_nics(vm.resource_id))
    if not found:
        raise ActionError(
            "discover NICs", f"the VM resource {vm.resource_id} lists no NIC; name them in [drain] nics"
        )
    ctx.nic_ids.put(vm.resource_id, found)
    return found


def read_nic(network: Network, nic_id: str) -> NetworkInterface:
    """A NIC by id: under the network provider, or a scale-set Uniform instance's NIC under the
    Compute provider (``.../virtualMachineScaleSets/{ss}/virtualMachines/{id}/networkInterfaces/{nic}``,
    as the instance's ``networkProfile`` lists it). Raises ArmError, ActionError."""
    parts = nic_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if "virtualmachinescalesets" in lowered and "networkinterfaces" in lowered:
        at = lowered.index("virtualmachinescalesets")
        try:
            group = parts[lowered.index("resourcegroups") + 1]
            scale_set, index, name = (
                parts[at + 1],
                parts[at + 3],
                parts[lowered.index("networkinterfaces") + 1],
            )
        except (ValueError, IndexError) as exc:
            raise ActionError("parse resource id", f"not a scale-set NIC id: {nic_id!r}") from exc
        return network.get_scale_set_nic(group, scale_set, index, name)
    rid = ResourceId.parse(nic_id)
    return network.get_nic(rid.resource_group, rid.name)


def vm_resource_id(vm: InstanceInfo, name: str) -> str:
    """The resource id of the VM called ``name`` (as Scheduled Events lists it) beside this one: a
    VM of this VM's resource group (an availability set's or a Flexible scale set's VMs are ordinary
    VM resources), or, when this VM is a scale-set Uniform instance and the name is
    ``<scale set>_<instance id>``, that instance of the same scale set."""
    base = (
        f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}/providers/Microsoft.Compute"
    )
    if (
        vm.is_uniform_scale_set_instance
        and vm.scale_set
        and name.lower().startswith(vm.scale_set.lower() + "_")
    ):
        return f"{base}/virtualMachineScaleSets/{vm.scale_set}/virtualMachines/{name.rpartition('_')[2]}"
    return f"{base}/virtualMachines/{name}"


def read_modify_write(
    what: str,
    read: Callable[[], T],
    plan: Callable[[T], W | None],
    write: Callable[[T, W], None],
    ctx: ActionContext,
) -> W | None:
    """The one etag loop: read, plan the change (None: nothing to do), write with ``If-Match``; on
    412 (someone else wrote meanwhile: our write did not happen) read again after a jittered
    back-off, at most MAX_CONFLICTS times. Returns the plan written (or None). Raises ArmError,
    ActionError."""
    for conflicts in range(MAX_CONFLICTS):
        if conflicts:
            limit = min(CONFLICT_BACKOFF_MAX, CONFLICT_BACKOFF * 2 ** (conflicts - 1))
            time.sleep(random.uniform(0, limit))  # noqa: S311 - a delay, not a secret  # nosec B311
        current = read()
        change = plan(current)
        if change is None:
            return None
        try:
            write(current, change)
        except ArmError as exc:
            if exc.status != 412:
                raise
            ctx.log.info("changed meanwhile (412); re-reading", resource=what)
            continue
        return change
    raise ActionError("write", f"{what} kept changing ({MAX_CONFLICTS} conflicts in a row)")


def refused(exc: ArmError) -> bool:
    """A 4xx that surely did not apply the write (400 invalid, 403 forbidden or denied by policy, 404,
    409 conflict). 408 and 429 are not in it: the SDK retries those, and a timeout may have applied."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429)


def by_policy(exc: ArmError) -> bool:
    return exc.status == 403 and exc.code == "RequestDisallowedByPolicy"


class Presence:
    """Whether a backend pool (and its parent) exists, one read per parent and run; a 404 counts
    towards confirming it gone (``ctx.absence``), an answer forgets earlier 404s."""

    def __init__(self, network: Network, ctx: ActionContext) -> None:
        self.network = network
        self.ctx = ctx
        self._parents: dict[str, Any] = {}
        self._pools: dict[str, str] = {}

    def parent(self, kind: str, parent_id: str) -> tuple[str, Any]:
        """("present", resource) | ("absent", None) | ("gone", None). Raises ArmError."""
        key = parent_id.lower()
        if key not in self._parents:
            rid = ResourceId.parse(parent_id)
            try:
                if kind == "appgw-pool":
                    found: Any = self.network.get_app_gateway(rid.resource_group, rid.name)
                else:
                    found = self.network.get_load_balancer(rid.resource_group, rid.name)
            except ArmError as exc:
                if exc.status != 404:
                    raise
                gone = self.ctx.absence.absent(parent_id, self.ctx.now())
                self._parents[key] = ("gone" if gone else "absent", None)
            else:
                self.ctx.absence.present(parent_id)
                self._parents[key] = ("present", found)
        result: tuple[str, Any] = self._parents[key]
        return result

    def pool(self, kind: str, pool_id: str) -> str:
        """ "present" | "absent" | "gone" for a backend pool id (one answer per run)."""
        if pool_id.lower() not in self._pools:
            self._pools[pool_id.lower()] = self._pool(kind, pool_id)
        return self._pools[pool_id.lower()]

    def _pool(self, kind: str, pool_id: str) -> str:
        cut = pool_id.lower().find("/backendaddresspools/")
        state, parent = self.parent(kind, pool_id[:cut] if cut >= 0 else pool_id)
        if state != "present":
            return state
        if any(same(p.id, pool_id) for p in parent.backend_address_pools or []):
            self.ctx.absence.present(pool_id)
            return "present"
        return "gone" if self.ctx.absence.absent(pool_id, self.ctx.now()) else "absent"


def listed_nics(
    network: Network, vm: InstanceInfo, names: set[str], known: dict[str, list[str]] | None = None
) -> dict[str, list[str] | None]:
    """The NIC ids of the named VMs (None for a VM that does not exist), from each VM resource's
    ``networkProfile`` (one small GET per VM; ``vm_resource_id`` says where each one is), except
    those ``known`` already (this VM's, read during this boot). Raises ArmError (other than 404)."""
    found: dict[str, list[str] | None] = {}
    for name in sorted(n.casefold() for n in names):
        if known and name in known:
            found[name] = sorted(known[name])
            continue
        try:
            found[name] = sorted(network.get_vm_nics(vm_resource_id(vm, name)))
        except ArmError as exc:
            if exc.status != 404:
                raise
            found[name] = None
    return found


def still_in_pools(network: Network, nics: dict[str, list[str]]) -> set[str]:
    """Which of these VMs (name -> NIC ids) are still in a backend pool: a NIC referencing any load
    balancer or application gateway pool, or one of its addresses (in its virtual network) not Down
    in an IP-based pool of any load balancer of the subscription. The NICs are read in the order
    given, and the reads stop at the first VM found in a pool (the answer is then "wait", naming
    that VM); the subscription-wide load-balancer list is read only once no NIC references a pool.
    An empty answer comes from reading every NIC and the load balancers. Raises ArmError."""
    inside: set[str] = set()
    owners: dict[tuple[str, str], str] = {}
    for name, nic_ids in nics.items():
        if inside:
            return inside
        for nic_id in nic_ids:
            nic = read_nic(network, nic_id)
            for config in nic.ip_configurations or []:
                if config.private_ip_address and config.subnet is not None and config.subnet.id:
                    owners[(str(config.private_ip_address), vnet_of(str(config.subnet.id)))] = name
                if (
                    config.load_balancer_backend_address_pools
                    or config.application_gateway_backend_address_pools
                ):
                    inside.add(name)
    if inside or not owners:
        return inside
    for lb in network.list_all_load_balancers():
        for pool in lb.backend_address_pools or []:
            for address in pool.load_balancer_backend_addresses or []:
                network_id = address.virtual_network.id if address.virtual_network is not None else ""
                if not network_id and address.subnet is not None:
                    network_id = vnet_of(str(address.subnet.id))
                owner = owners.get((str(address.ip_address), str(network_id or "").lower()))
                if owner and (address.admin_state or "None") != "Down":
                    inside.add(owner)
    return inside
