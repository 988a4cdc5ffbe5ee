"""What Azure must let drainer's identity do, and whether it does: the actions each drain method needs
at each resource (``drainer doctor``), checked against the answer of Azure's permissions API. Pure.

Azure's permissions API ("Permissions - List For Resource Group" and "List For Resource",
https://learn.microsoft.com/rest/api/authorization/permissions; Azure/azure-rest-api-specs,
``Microsoft.Authorization/stable/2022-04-01/authorization-RoleDefinitionsCalls.json``) answers
``{"value": [{"actions", "notActions", "dataActions", "notDataActions"}]}``: one entry per role
assignment that applies at the scope (assigned at it or above it). An action is allowed when one
entry's ``actions`` match it and the same entry's ``notActions`` do not: Microsoft's "Understand Azure
role definitions" says NotActions are subtracted from that role's Actions and are not a deny rule (a
second role granting the action allows it). Both may hold wildcards, ``*`` standing for any characters,
``/`` included (``Microsoft.Network/*``, ``*/read`` as the built-in Reader role holds, ``*``); operation
names are case-insensitive.

The actions come from the shipped roles (``packaging/azure/drainer-role-*.json``, which list exactly
what each method's code calls and what ARM checks with it; ``tests/test_doctor.py`` keeps ``ROLES``
equal to them) and from the README's "Permissions": where ARM checks each one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

NET = "Microsoft.Network"
NIC_READ = f"{NET}/networkInterfaces/read"
NIC_WRITE = f"{NET}/networkInterfaces/write"
LB_READ = f"{NET}/loadBalancers/read"
POOL_JOIN = f"{NET}/loadBalancers/backendAddressPools/join/action"
POOL_WRITE = f"{NET}/loadBalancers/backendAddressPools/write"
NAT_JOIN = f"{NET}/loadBalancers/inboundNatRules/join/action"
SUBNET_JOIN = f"{NET}/virtualNetworks/subnets/join/action"
NSG_JOIN = f"{NET}/networkSecurityGroups/join/action"
PIP_JOIN = f"{NET}/publicIPAddresses/join/action"
ASG_JOIN = f"{NET}/applicationSecurityGroups/joinIpConfiguration/action"
VNET_JOIN_LB = f"{NET}/virtualNetworks/joinLoadBalancer/action"
SUBNET_JOIN_LB = f"{NET}/virtualNetworks/subnets/joinLoadBalancer/action"
OPERATIONS = f"{NET}/locations/operations/read"
APPGW_READ = f"{NET}/applicationGateways/read"
APPGW_POOL_JOIN = f"{NET}/applicationGateways/backendAddressPools/join/action"
COMPUTE = "Microsoft.Compute"
VM_READ = f"{COMPUTE}/virtualMachines/read"  # this VM's NICs, from its networkProfile
VMSS_VM_READ = f"{COMPUTE}/virtualMachineScaleSets/virtualMachines/read"  # a Uniform instance's
VMSS_NIC_READ = f"{COMPUTE}/virtualMachineScaleSets/virtualMachines/networkInterfaces/read"


class Role(NamedTuple):
    file: str  # in packaging/azure/ (installed in /usr/share/drainer/azure/)
    name: str  # its "Name", what `az role assignment create --role` takes
    actions: tuple[str, ...]


_NIC_JOINS = (POOL_JOIN, NAT_JOIN, SUBNET_JOIN, NSG_JOIN, PIP_JOIN, ASG_JOIN)
ROLES: Mapping[str, Role] = {
    "nic": Role(
        "drainer-role-nic.json",
        "drainer nic method",
        (NIC_READ, NIC_WRITE, LB_READ, *_NIC_JOINS, OPERATIONS, VM_READ),
    ),
    "admin-state": Role(
        "drainer-role-admin-state.json",
        "drainer admin-state method",
        (
            LB_READ,
            POOL_WRITE,
            VNET_JOIN_LB,
            SUBNET_JOIN_LB,
            NIC_READ,
            NIC_WRITE,
            *_NIC_JOINS,
            OPERATIONS,
            VM_READ,
            VMSS_VM_READ,
            VMSS_NIC_READ,
        ),
    ),
    "reader": Role("drainer-role-reader.json", "drainer reader", (NIC_READ, LB_READ, VM_READ, VMSS_VM_READ)),
}

# What a NIC PUT is authorised against, per resource its body links ("linked authorization": README,
# Permissions), and the resource whose scope ARM checks it at (a pool's or NAT rule's load balancer).
LINK_ACTIONS: Mapping[str, str] = {
    "subnet": SUBNET_JOIN,
    "lb-pool": POOL_JOIN,
    "nat-rule": NAT_JOIN,
    "nsg": NSG_JOIN,
    "public-ip": PIP_JOIN,
    "asg": ASG_JOIN,
    "appgw-pool": APPGW_POOL_JOIN,
}
_CHILDREN = ("/backendaddresspools/", "/inboundnatrules/")


class Need(NamedTuple):
    """Actions drainer needs at one scope (a resource, or a resource group)."""

    scope: str  # the id the permissions API is asked about
    label: str  # how a person names it: "NIC web-0-nic", "load balancer lb-web"
    actions: tuple[str, ...]


class Links(NamedTuple):
    """A NIC and what its body links: (kind, resource id) pairs, kinds as in ``LINK_ACTIONS``."""

    nic_id: str
    links: tuple[tuple[str, str], ...]


def _pattern(wildcard: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in wildcard.split("*")), re.IGNORECASE)


def matches(wildcard: str, action: str) -> bool:
    """Whether an ``actions``/``notActions`` entry (wildcards allowed) covers ``action``."""
    return _pattern(wildcard).fullmatch(action) is not None


def allows(permissions: Iterable[Mapping[str, Any]], action: str) -> bool:
    """Whether the permissions API's ``value`` allows ``action``."""
    for entry in permissions:
        granted = any(matches(str(a), action) for a in entry.get("actions") or [])
        if granted and not any(matches(str(n), action) for n in entry.get("notActions") or []):
            return True
    return False


def missing(permissions: Iterable[Mapping[str, Any]], actions: Iterable[str]) -> list[str]:
    """The actions of ``actions`` the permissions do not allow, in order."""
    held = list(permissions)
    return [a for a in actions if not allows(held, a)]


def _name(resource_id: str, depth: int = 1) -> str:
    return "/".join(resource_id.rstrip("/").split("/")[-(2 * depth - 1) :: 2])


def _parent(resource_id: str) -> str:
    lowered = resource_id.lower()
    for child in _CHILDREN:
        cut = lowered.find(child)
        if cut >= 0:
            return resource_id[:cut]
    return resource_id


def _label(kind: str, resource_id: str) -> str:
    if kind in ("lb-pool", "nat-rule"):
        return f"load balancer {_name(_parent(resource_id))}"
    if kind == "appgw-pool":
        return f"application gateway {_name(_parent(resource_id))}"
    if kind == "subnet":
        return f"subnet {_name(resource_id, 2)}"
    words = {"nsg": "network security group", "public-ip": "public IP", "asg": "application security group"}
    return f"{words.get(kind, kind)} {_name(resource_id)}"


class _Needs:
    """Needs merged by scope, in the order they were first named."""

    def __init__(self) -> None:
        self._by_scope: dict[str, Need] = {}

    def add(self, scope: str, label: str, *actions: str) -> None:
        key = scope.lower()
        known = self._by_scope.get(key)
        merged = (*known.actions, *(a for a in actions if a not in known.actions)) if known else actions
        self._by_scope[key] = Need(known.scope if known else scope, known.label if known else label, merged)

    def all(self) -> list[Need]:
        return list(self._by_scope.values())


def _nic_writes(needs: _Needs, nic: Links, *, app_gateways: bool) -> None:
    """A NIC PUT: the NIC itself, the operation poll, and every resource its body links."""
    needs.add(nic.nic_id, f"NIC {_name(nic.nic_id)}", NIC_READ, NIC_WRITE, OPERATIONS)
    for kind, resource_id in nic.links:
        if kind == "appgw-pool" and not app_gateways:
            continue
        scope = resource_id if kind == "subnet" else _parent(resource_id)
        reads = {"lb-pool": (LB_READ,), "appgw-pool": (APPGW_READ,)}.get(kind, ())
        needs.add(scope, _label(kind, resource_id), *reads, LINK_ACTIONS[kind])


def needs(
    method: str,
    resource_group_id: str,
    nics: Sequence[Links],
    *,
    lists_nics: bool,
    lists_subscription: bool,
    app_gateways: bool = False,
    admin_pools: Sequence[tuple[str, str]] = (),
    vm_id: str = "",
) -> list[Need]:
    """What ``method`` (``nic`` or ``admin-state``) needs, scope by scope.

    ``lists_nics``: NICs are found from this VM's resource ([drain] nics unset: ``vm_id``'s
    networkProfile, a Microsoft.Compute read);
    ``lists_subscription``: the subscription's NICs and load balancers are listed (early approval;
    ``admin-state`` always lists the load balancers): asked at the resource group, the nearest scope
    the permissions API answers for; ``admin_pools``: (pool id, virtual network id) of each IP-based
    pool address of this VM (``admin-state``).
    """
    found = _Needs()
    group = f"resource group {_name(resource_group_id)}"
    if lists_nics and vm_id:
        uniform = "/virtualmachinescalesets/" in vm_id.lower()
        found.add(vm_id, f"VM {_name(vm_id)}", VMSS_VM_READ if uniform else VM_READ)
    if lists_subscription:
        found.add(resource_group_id, group, NIC_READ)
    if lists_subscription or method == "admin-state":
        found.add(resource_group_id, group, LB_READ)
    if method == "nic":
        for nic in nics:
            _nic_writes(found, nic, app_gateways=app_gateways)
    elif method == "admin-state":
        # The pool PUT, authorised against the virtual network its addresses link; the record on
        # the primary NIC is a NIC PUT.
        for pool_id, vnet_id in admin_pools:
            lb_id = _parent(pool_id)
            found.add(lb_id, f"load balancer {_name(lb_id)}", LB_READ, POOL_WRITE)
            found.add(vnet_id, f"virtual network {_name(vnet_id)}", VNET_JOIN_LB)
        for nic in nics[:1]:
            _nic_writes(found, nic, app_gateways=False)
    return found.all()


def role_for(method: str, action: str) -> Role | None:
    """The shipped role that grants ``action`` for ``method``;
    None for an action no shipped role holds (application gateways: README, Permissions)."""
    for key in (method,):
        role = ROLES.get(key)
        if role is not None and action in role.actions:
            return role
    return None
