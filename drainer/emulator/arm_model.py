"""The emulated ARM network subset that ``azure-mgmt-network`` uses for a drain.

Resources are kept as the JSON ARM returns (shaped after the spec examples and the recorded SDK
session in ``shared/azure-examples``):

- NICs: GET, list per resource group, PUT with ``If-Match`` (412 ``PreconditionFailed`` /
  ``PreconditionFailedEtagMismatch`` on a stale etag, 400 ``InvalidResourceReference`` for a pool that
  does not exist), answered with ``Azure-AsyncOperation`` like the recording.
- Load balancers: GET and list; NIC-based pools derive ``backendIPConfigurations`` from the NICs;
  IP-based pools carry ``loadBalancerBackendAddresses`` with ``adminState`` and are PUT on the pool.
  A pool's etag is its load balancer's, as Azure answers (every child of a load balancer carries the
  parent's etag: the recorded SDK session ``sdk/network/azure-mgmt-network/tests/recordings/
  test_mgmt_network.test_load_balancers.yaml`` in Azure/azure-sdk-for-python): a write to one pool
  changes the etag of its siblings too, so a PUT of a sibling with ``If-Match`` read before it fails
  with 412. Whether a NIC joining or leaving a pool changes the load balancer's etag is not
  documented: it does not here, and drainer depends on neither.
- Application gateways: GET (their backend pools may be referenced from NIC ipConfigurations).
- Application security groups: GET and PUT with ``If-Match`` (tags only; drainer uses none since
  issue 19: the fleet's floor no longer needs a lease).
- Resource groups: every resource lives in one (the default, or one named when it is added); a
  request naming another group gets 404. Names are unique across groups here (a simplification).
- Subscription-wide lists of NICs and load balancers (``list_all``).
- Throttling (``throttle.py``) and a membership timeline per pool (for the fleet benchmark).
- The permissions API (``Permissions - List For Resource Group`` / ``List For Resource``): each
  principal's role assignments (scope, actions, notActions), the shipped ``nic`` role at the
  subscription unless a test sets others; an answer lists every assignment at the scope or above.
- Async operations: ``InProgress`` for a configurable number of polls, then ``Succeeded`` (or
  ``Failed`` when a fault says so).
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

NETWORK = "Microsoft.Network"
# What packaging/azure/drainer-role-nic.json grants (tests/test_doctor.py checks they agree): every
# principal holds it at the subscription until a test gives it other role assignments.
NIC_ROLE_ACTIONS = (
    "Microsoft.Network/networkInterfaces/read",
    "Microsoft.Network/networkInterfaces/write",
    "Microsoft.Network/loadBalancers/read",
    "Microsoft.Network/loadBalancers/backendAddressPools/join/action",
    "Microsoft.Network/loadBalancers/inboundNatRules/join/action",
    "Microsoft.Network/virtualNetworks/subnets/join/action",
    "Microsoft.Network/networkSecurityGroups/join/action",
    "Microsoft.Network/publicIPAddresses/join/action",
    "Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action",
    "Microsoft.Network/locations/operations/read",
    "Microsoft.Compute/virtualMachines/read",
)


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The child resource called ``name`` (ARM names are case-insensitive)."""
    for item in items:
        if str(item["name"]).lower() == name.lower():
            return item
    return None


def _in_group(resource: dict[str, Any], group: str | None) -> bool:
    return group is None or str(resource["id"]).split("/")[4].lower() == group.lower()


def new_etag() -> str:
    return f'W/"{uuid.uuid4()}"'


class ArmError(Exception):
    """An ARM error answer: status and the ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": {"code": code, "message": message}}
        if details:
            self.body["error"]["details"] = details
        self.headers = headers or {}


@dataclass
class Operation:
    polls_left: int
    fail: bool = False


@dataclass
class ArmSettings:
    lro_polls: int = 1  # polls answered InProgress before Succeeded
    lro_retry_after: str | None = None  # Retry-After on PUT answers (the recording has none)
    status_retry_after: str | None = None  # Retry-After on InProgress operation-status answers
    put_delay: float = 0.0  # seconds a NIC PUT takes to answer (to see writes overlap)
    # An organisation's Azure Policy on tags whose name starts with ``tag_policy_prefix``:
    # "deny" refuses the write (403 RequestDisallowedByPolicy), "strip" drops those tags silently
    # (a "modify" effect), None lets them through.
    tag_policy: str | None = None
    tag_policy_prefix: str = "drainer"


# Azure's documented tag limits: 50 tags per resource, names up to 512 characters (case-insensitive,
# none of ``<>%&\?/``), values up to 256 characters.
MAX_TAGS = 50
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
_TAG_NAME_FORBIDDEN = set("<>%&\\?/")


def check_tags(tags: object) -> dict[str, str]:
    """The tags of a PUT or PATCH body, validated as ARM does. Raises ArmError (400)."""
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ArmError(400, "InvalidRequestContent", "tags must be an object of strings")
    if len(tags) > MAX_TAGS:
        raise ArmError(
            400, "InvalidTagCount", f"The number of tags {len(tags)} exceeds the maximum of {MAX_TAGS}."
        )
    lowered: set[str] = set()
    for name, value in tags.items():
        if not name or len(name) > MAX_TAG_NAME or _TAG_NAME_FORBIDDEN & set(name):
            raise ArmError(
                400,
                "InvalidTagNameCharacters",
                f"The tag names '{name}' have reserved characters '<,>,%,&,\\,?,/' or control characters.",
            )
        if len(value) > MAX_TAG_VALUE:
            raise ArmError(
                400,
                "InvalidTagValueLength",
                f"The tag value of '{name}' exceeds the maximum length of {MAX_TAG_VALUE} characters.",
            )
        if name.lower() in lowered:
            raise ArmError(
                400, "InvalidTagName", f"Duplicate tag name '{name}' (tag names are case-insensitive)."
            )
        lowered.add(name.lower())
    return dict(tags)


@dataclass
class Mutation:
    """A concurrent writer: after the next GET of ``nic``, someone else changes it."""

    nic: str
    tag: tuple[str, str] | None = None
    add_pool: tuple[str, str] | None = None  # (ipconfig name, pool id)


@dataclass
class ArmModel:
    subscription_id: str
    resource_group: str
    location: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    nics: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-case name -> NIC
    lbs: dict[str, dict[str, Any]] = field(default_factory=dict)
    appgws: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    settings: ArmSettings = field(default_factory=ArmSettings)
    fail_next_lro: int = 0
    fail_lro_nic: str | None = None  # only writes of this NIC (lower-case) fail; None: any NIC
    mutations: list[Mutation] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    asgs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Virtual machines (Microsoft.Compute), by lower-case resource id: (resource id, name, vmId).
    vms: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # adminState set on members of NIC-based pools: (pool id, ipConfiguration id), lower case -> state.
    nic_admin: dict[tuple[str, str], str] = field(default_factory=dict)
    # (time, pool id, members in service) after every change of a pool's membership.
    timeline: list[tuple[float, str, int]] = field(default_factory=list)
    # principal (lower case) -> its role assignments ({"scope", "actions", "notActions"}); a principal
    # not named holds the nic role at the subscription.
    assignments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    # -- ids ---------------------------------------------------------------------------------

    @property
    def rg_id(self) -> str:
        return self.group_id(None)

    def group_id(self, resource_group: str | None) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{resource_group or self.resource_group}"

    def _group_of(self, table: dict[str, dict[str, Any]], name: str) -> str | None:
        found = table.get(name.lower())
        return str(found["id"]).split("/")[4] if found else None

    def nic_id(self, name: str, resource_group: str | None = None) -> str:
        group = resource_group or self._group_of(self.nics, name)
        return f"{self.group_id(group)}/providers/{NETWORK}/networkInterfaces/{name}"

    def lb_id(self, name: str, resource_group: str | None = None) -> str:
        group = resource_group or self._group_of(self.lbs, name)
        return f"{self.group_id(group)}/providers/{NETWORK}/loadBalancers/{name}"

    def asg_id(self, name: str, resource_group: str | None = None) -> str:
        group = resource_group or self._group_of(self.asgs, name)
        return f"{self.group_id(group)}/providers/{NETWORK}/applicationSecurityGroups/{name}"

    def pool_id(self, lb: str, pool: str) -> str:
        return f"{self.lb_id(lb)}/backendAddressPools/{pool}"

    def groups(self) -> set[str]:
        """The resource groups that exist (lower case)."""
        with self.lock:
            found = {self.resource_group.lower()}
            for table in (self.nics, self.lbs, self.appgws, self.asgs):
                found |= {str(r["id"]).split("/")[4].lower() for r in table.values()}
            return found

    def subnet_id(self) -> str:
        return f"{self.rg_id}/providers/{NETWORK}/virtualNetworks/vnet/subnets/default"

    # -- scripting ---------------------------------------------------------------------------

    def add_nic(
        self,
        name: str,
        vm_resource_id: str,
        private_ip: str,
        *,
        primary: bool = True,
        resource_group: str | None = None,
        nic_id: str | None = None,
    ) -> None:
        """A NIC attached to ``vm_resource_id``; ``nic_id`` overrides its id (a scale-set Uniform
        instance's NICs live under the Compute provider)."""
        with self.lock:
            nic_id = nic_id or self.nic_id(name, resource_group or self.resource_group)
            etag = new_etag()
            self.nics[name.lower()] = {
                "name": name,
                "id": nic_id,
                "etag": etag,
                "location": self.location,
                "type": f"{NETWORK}/networkInterfaces",
                "properties": {
                    "provisioningState": "Succeeded",
                    "resourceGuid": str(uuid.uuid4()),
                    "ipConfigurations": [
                        {
                            "name": "ipconfig1",
                            "id": f"{nic_id}/ipConfigurations/ipconfig1",
                            "etag": etag,
                            "type": f"{NETWORK}/networkInterfaces/ipConfigurations",
                            "properties": {
                                "provisioningState": "Succeeded",
                                "privateIPAddress": private_ip,
                                "privateIPAllocationMethod": "Dynamic",
                                "subnet": {"id": self.subnet_id()},
                                "primary": True,
                                "privateIPAddressVersion": "IPv4",
                                "loadBalancerBackendAddressPools": [],
                                "loadBalancerInboundNatRules": [],
                                "applicationGatewayBackendAddressPools": [],
                            },
                        }
                    ],
                    "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
                    "enableAcceleratedNetworking": False,
                    "enableIPForwarding": False,
                    "primary": primary,
                    "virtualMachine": {"id": vm_resource_id},
                },
            }

    def add_vm(self, resource_id: str, name: str, vm_id: str) -> None:
        with self.lock:
            self.vms[resource_id.lower()] = (resource_id, name, vm_id)

    def get_vm(self, resource_id: str) -> dict[str, Any]:
        """The VM resource (Microsoft.Compute) as ``GET .../virtualMachines/{name}`` (or, for a
        scale-set Uniform instance, ``.../virtualMachineScaleSets/{ss}/virtualMachines/{id}``)
        answers it, shaped after VirtualMachine_Get.json and VirtualMachineScaleSetVM_Get_WithUserData
        .json (2024-07-01): ``properties.networkProfile.networkInterfaces`` lists the attached NICs.
        Raises ArmError (404 ResourceNotFound)."""
        with self.lock:
            found = self.vms.get(resource_id.rstrip("/").lower())
            if found is None:
                raise ArmError(
                    404,
                    "ResourceNotFound",
                    f"The Resource '{resource_id.split('/providers/', 1)[-1]}' under resource group "
                    f"'{resource_id.split('/')[4]}' was not found. For more details please go to "
                    "https://aka.ms/ARMResourceNotFoundFix",
                )
            vm_resource_id, name, vm_id = found
            attached = [
                n
                for n in self.nics.values()
                if str((n["properties"].get("virtualMachine") or {}).get("id", "")).lower()
                == vm_resource_id.lower()
            ]
            return {
                "name": name,
                "id": vm_resource_id,
                "type": "Microsoft.Compute/virtualMachines",
                "location": self.location,
                "properties": {
                    "vmId": vm_id,
                    "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
                    "networkProfile": {
                        "networkInterfaces": [
                            {"id": n["id"], "properties": {"primary": bool(n["properties"].get("primary"))}}
                            for n in attached
                        ]
                    },
                    "provisioningState": "Succeeded",
                },
            }

    def get_nic_by_id(self, nic_id: str) -> dict[str, Any]:
        """A NIC by its full id (a scale-set Uniform instance's NIC under the Compute provider).
        Raises ArmError (404)."""
        with self.lock:
            for nic in self.nics.values():
                if str(nic["id"]).lower() == nic_id.rstrip("/").lower():
                    return self.get_nic(str(nic["name"]))
            raise ArmError(404, "NotFound", f"Resource {nic_id} not found.")

    def add_load_balancer(
        self,
        name: str,
        *,
        pools: list[str],
        ip_pools: list[str] | None = None,
        probe: bool = True,
        sku: str = "Standard",
        resource_group: str | None = None,
    ) -> None:
        with self.lock:
            lb_id = self.lb_id(name, resource_group or self.resource_group)
            rules = []
            pool_entries = []
            for pool in [*pools, *(ip_pools or [])]:
                rule_id = f"{lb_id}/loadBalancingRules/rule-{pool}"
                rule_props: dict[str, Any] = {
                    "provisioningState": "Succeeded",
                    "frontendIPConfiguration": {"id": f"{lb_id}/frontendIPConfigurations/fe"},
                    "backendAddressPool": {"id": f"{lb_id}/backendAddressPools/{pool}"},
                    "protocol": "Tcp",
                    "frontendPort": 80,
                    "backendPort": 80,
                }
                if probe:
                    rule_props["probe"] = {"id": f"{lb_id}/probes/http"}
                rules.append({"name": f"rule-{pool}", "id": rule_id, "properties": rule_props})
                props: dict[str, Any] = {
                    "provisioningState": "Succeeded",
                    "loadBalancingRules": [{"id": rule_id}],
                }
                if pool in (ip_pools or []):
                    props["loadBalancerBackendAddresses"] = []
                pool_entries.append(
                    {
                        "name": pool,
                        "id": f"{lb_id}/backendAddressPools/{pool}",
                        "type": f"{NETWORK}/loadBalancers/backendAddressPools",
                        "properties": props,
                    }
                )
            etag = new_etag()
            for entry in pool_entries:
                entry["etag"] = etag
            self.lbs[name.lower()] = {
                "name": name,
                "id": lb_id,
                "etag": etag,
                "type": f"{NETWORK}/loadBalancers",
                "location": self.location,
                "sku": {"name": sku},
                "properties": {
                    "provisioningState": "Succeeded",
                    "frontendIPConfigurations": [
                        {
                            "name": "fe",
                            "id": f"{lb_id}/frontendIPConfigurations/fe",
                            "properties": {"privateIPAddress": "10.0.1.4"},
                        }
                    ],
                    "backendAddressPools": pool_entries,
                    "loadBalancingRules": rules,
                    "probes": [
                        {
                            "name": "http",
                            "id": f"{lb_id}/probes/http",
                            "properties": {"protocol": "Http", "port": 80, "requestPath": "/healthz"},
                        }
                    ]
                    if probe
                    else [],
                    "inboundNatRules": [],
                },
            }

    def add_app_gateway(self, name: str, pools: list[str]) -> None:
        with self.lock:
            gw_id = f"{self.rg_id}/providers/{NETWORK}/applicationGateways/{name}"
            self.appgws[name.lower()] = {
                "name": name,
                "id": gw_id,
                "etag": new_etag(),
                "type": f"{NETWORK}/applicationGateways",
                "location": self.location,
                "properties": {
                    "provisioningState": "Succeeded",
                    "backendAddressPools": [
                        {"name": p, "id": f"{gw_id}/backendAddressPools/{p}", "properties": {}} for p in pools
                    ],
                },
            }

    def join(self, nic: str, pool_id: str, *, ipconfig: str = "ipconfig1", kind: str = "lb") -> None:
        """Put a NIC's ipConfiguration into a pool (as an operator would)."""
        with self.lock:
            config = self._ipconfig(self._nic(nic), ipconfig)
            key = (
                "applicationGatewayBackendAddressPools"
                if kind == "appgw"
                else "loadBalancerBackendAddressPools"
            )
            refs = config["properties"].setdefault(key, [])
            if not any(r["id"].lower() == pool_id.lower() for r in refs):
                refs.append({"id": pool_id})
            self._nic(nic)["etag"] = new_etag()
            self._note_membership()

    def leave(self, nic: str, pool_id: str, *, ipconfig: str = "ipconfig1") -> None:
        """Take a NIC's ipConfiguration out of a pool (as an operator would)."""
        with self.lock:
            config = self._ipconfig(self._nic(nic), ipconfig)
            for key in ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools"):
                refs = config["properties"].get(key) or []
                config["properties"][key] = [r for r in refs if r["id"].lower() != pool_id.lower()]
            self._nic(nic)["etag"] = new_etag()
            self._note_membership()

    def add_ip_member(
        self, lb: str, pool: str, name: str, ip: str, admin_state: str | None = None, *, vnet: str = "vnet"
    ) -> None:
        with self.lock:
            entry = self._pool(lb, pool)
            props: dict[str, Any] = {
                "virtualNetwork": {"id": f"{self.rg_id}/providers/{NETWORK}/virtualNetworks/{vnet}"},
                "ipAddress": ip,
            }
            if admin_state is not None:
                props["adminState"] = admin_state
            entry["properties"].setdefault("loadBalancerBackendAddresses", []).append(
                {"name": name, "properties": props}
            )
            self._touch(self._lb(lb))

    def delete_pool(self, lb: str, pool: str) -> None:
        with self.lock:
            props = self._lb(lb)["properties"]
            props["backendAddressPools"] = [p for p in props["backendAddressPools"] if p["name"] != pool]
            self._touch(self._lb(lb))
            pool_id = self.pool_id(lb, pool).lower()
            # Azure refuses to delete a pool in use; an operator removes the NIC references first.
            for nic in self.nics.values():
                for config in nic["properties"]["ipConfigurations"]:
                    refs = config["properties"].get("loadBalancerBackendAddressPools") or []
                    config["properties"]["loadBalancerBackendAddressPools"] = [
                        r for r in refs if r["id"].lower() != pool_id
                    ]

    def add_asg(self, name: str, resource_group: str | None = None) -> str:
        """An application security group."""
        with self.lock:
            asg_id = self.asg_id(name, resource_group or self.resource_group)
            self.asgs[name.lower()] = {
                "name": name,
                "id": asg_id,
                "etag": new_etag(),
                "type": f"{NETWORK}/applicationSecurityGroups",
                "location": self.location,
                "tags": {},
                "properties": {"provisioningState": "Succeeded", "resourceGuid": str(uuid.uuid4())},
            }
            return asg_id

    def get_asg(self, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._resource(self.asgs, "applicationSecurityGroups", name))

    def put_asg(self, name: str, body: dict[str, Any], if_match: str | None) -> tuple[dict[str, Any], str]:
        """PUT of an application security group: only its tags change here. Raises ArmError."""
        with self.lock:
            asg = self._resource(self.asgs, "applicationSecurityGroups", name)
            self._check_etag(asg, if_match)
            asg["tags"] = self._apply_tag_policy(check_tags(body.get("tags")))
            asg["etag"] = new_etag()
            operation = str(uuid.uuid4())
            self.operations[operation] = Operation(polls_left=self.settings.lro_polls)
            self.writes.append({"kind": "asg", "name": name, "if_match": if_match, "failed": False})
            return copy.deepcopy(asg), operation

    def set_assignments(self, principal: str, assignments: list[dict[str, Any]]) -> None:
        """Replace ``principal``'s role assignments. Raises TypeError for a malformed one."""
        checked = []
        for item in assignments:
            scope = str(item.get("scope") or f"/subscriptions/{self.subscription_id}")
            actions, not_actions = item.get("actions", []), item.get("notActions", [])
            if not isinstance(actions, list) or not isinstance(not_actions, list):
                raise TypeError("actions and notActions must be lists")
            checked.append({"scope": scope, "actions": list(actions), "notActions": list(not_actions)})
        with self.lock:
            self.assignments[principal.lower()] = checked

    def permissions(self, principal: str, scope: str) -> dict[str, Any]:
        """The permissions API's answer for ``principal`` at ``scope``: one entry per role assignment at
        that scope or above it (a role assigned at a resource group applies to what is inside it)."""
        with self.lock:
            held = self.assignments.get(principal.lower())
            if held is None:
                held = [
                    {
                        "scope": f"/subscriptions/{self.subscription_id}",
                        "actions": list(NIC_ROLE_ACTIONS),
                        "notActions": [],
                    }
                ]
            wanted = scope.rstrip("/").lower()
            value = [
                {
                    "actions": list(a["actions"]),
                    "notActions": list(a["notActions"]),
                    "dataActions": [],
                    "notDataActions": [],
                }
                for a in held
                if wanted == a["scope"].rstrip("/").lower()
                or wanted.startswith(a["scope"].rstrip("/").lower() + "/")
            ]
            return {"value": value}

    def locate(self, kind: str, name: str | None, group: str) -> None:
        """404 as ARM answers for a resource group that does not exist, or a resource named in a
        group it is not in. Raises ArmError."""
        if group.lower() not in self.groups():
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        table = {
            "networkInterfaces": self.nics,
            "loadBalancers": self.lbs,
            "applicationGateways": self.appgws,
            "applicationSecurityGroups": self.asgs,
        }[kind]
        if name is None:
            return
        found = self._group_of(table, name)
        if found is not None and found.lower() != group.lower():
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{NETWORK}/{kind}/{name}' under resource group '{group}' was not found.",
            )

    def in_service(self) -> dict[str, int]:
        """pool id (lower case) -> members in service (NICs referencing it whose adminState is not
        Down; IP members not Down)."""
        counts: dict[str, int] = {}
        for lb in self.lbs.values():
            for pool in lb["properties"]["backendAddressPools"]:
                counts[pool["id"].lower()] = sum(
                    1
                    for address in pool["properties"].get("loadBalancerBackendAddresses") or []
                    if address["properties"].get("adminState", "None") != "Down"
                )
        for gateway in self.appgws.values():
            for pool in gateway["properties"]["backendAddressPools"]:
                counts[pool["id"].lower()] = 0
        for nic in self.nics.values():
            for config in nic["properties"]["ipConfigurations"]:
                props = config["properties"]
                refs = [
                    *(props.get("loadBalancerBackendAddressPools") or []),
                    *(props.get("applicationGatewayBackendAddressPools") or []),
                ]
                for ref in refs:
                    key = ref["id"].lower()
                    if key in counts and self.nic_admin.get((key, config["id"].lower())) != "Down":
                        counts[key] += 1
        return counts

    def _note_membership(self) -> None:
        """Append to the timeline the pools whose in-service count changed (and forget the admin
        state of a NIC-based pool's members that left it: a member that joins again starts at None)."""
        members = {
            (ref["id"].lower(), config["id"].lower())
            for nic in self.nics.values()
            for config in nic["properties"]["ipConfigurations"]
            for ref in config["properties"].get("loadBalancerBackendAddressPools") or []
        }
        self.nic_admin = {k: v for k, v in self.nic_admin.items() if k in members}
        now = time.time()
        last: dict[str, int] = {}
        for _, pool, count in self.timeline:
            last[pool] = count
        for pool, count in self.in_service().items():
            if last.get(pool) != count:
                self.timeline.append((now, pool, count))

    def vms_in_pools(self, names: list[str]) -> list[str]:
        """Which of these VMs (by name) still have a NIC in a pool, or an IP member not Down."""
        with self.lock:
            wanted = {n.lower() for n in names}
            found: set[str] = set()
            addresses: dict[str, str] = {}
            for nic in self.nics.values():
                vm = str((nic["properties"].get("virtualMachine") or {}).get("id", "")).rsplit("/", 1)[-1]
                if vm.lower() not in wanted:
                    continue
                for config in nic["properties"]["ipConfigurations"]:
                    addresses[str(config["properties"].get("privateIPAddress"))] = vm
                    lb_refs = config["properties"].get("loadBalancerBackendAddressPools") or []
                    if config["properties"].get("applicationGatewayBackendAddressPools") or any(
                        self.nic_admin.get((r["id"].lower(), config["id"].lower())) != "Down" for r in lb_refs
                    ):
                        found.add(vm)
            for lb in self.lbs.values():
                for pool in lb["properties"]["backendAddressPools"]:
                    for address in pool["properties"].get("loadBalancerBackendAddresses") or []:
                        owner = addresses.get(str(address["properties"].get("ipAddress")))
                        if owner and address["properties"].get("adminState", "None") != "Down":
                            found.add(owner)
            return sorted(found)

    def membership(self) -> dict[str, list[str]]:
        """pool id -> sorted NIC names (NIC-based) or "ip=<address> (<adminState>)" (IP-based)."""
        with self.lock:
            out: dict[str, list[str]] = {}
            for lb in self.lbs.values():
                for pool in lb["properties"]["backendAddressPools"]:
                    members = [
                        n["name"] + (" (Down)" if self._member_state(n, pool["id"]) == "Down" else "")
                        for n in self.nics.values()
                        if self._in_pool(n, pool["id"])
                    ]
                    for address in pool["properties"].get("loadBalancerBackendAddresses") or []:
                        state = address["properties"].get("adminState", "None")
                        members.append(f"ip={address['properties'].get('ipAddress')} ({state})")
                    out[pool["id"]] = sorted(members)
            return out

    # -- lookups -----------------------------------------------------------------------------

    def _resource(self, table: dict[str, dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        found = table.get(name.lower())
        if found is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{NETWORK}/{kind}/{name}' under resource group "
                f"'{self.resource_group}' was not found.",
            )
        return found

    def _nic(self, name: str) -> dict[str, Any]:
        return self._resource(self.nics, "networkInterfaces", name)

    def _lb(self, name: str) -> dict[str, Any]:
        return self._resource(self.lbs, "loadBalancers", name)

    @staticmethod
    def _touch(lb: dict[str, Any]) -> None:
        """A write to a load balancer or any of its pools: one new etag for it and every pool."""
        lb["etag"] = new_etag()
        for pool in lb["properties"]["backendAddressPools"]:
            pool["etag"] = lb["etag"]

    @staticmethod
    def _check_etag(resource: dict[str, Any], if_match: str | None) -> None:
        """412 as Azure answers a stale If-Match (PreconditionFailed / PreconditionFailedEtagMismatch)."""
        if if_match is not None and if_match not in ("*", resource["etag"]):
            raise ArmError(
                412,
                "PreconditionFailed",
                "Precondition failed.",
                [
                    {
                        "code": "PreconditionFailedEtagMismatch",
                        "message": f"Etag provided in if-match header {if_match} does not match etag "
                        f"{resource['etag']} of resource {resource['id']} in NRP data store.",
                    }
                ],
            )

    def _pool(self, lb: str, pool: str) -> dict[str, Any]:
        entry = _named(self._lb(lb)["properties"]["backendAddressPools"], pool)
        if entry is None:
            raise ArmError(404, "NotFound", f"Resource {self.pool_id(lb, pool)} not found.")
        return entry

    @staticmethod
    def _ipconfig(nic: dict[str, Any], name: str) -> dict[str, Any]:
        config = _named(nic["properties"]["ipConfigurations"], name)
        if config is None:
            raise ArmError(404, "NotFound", f"ipConfiguration {name} not found")
        return config

    @staticmethod
    def _in_pool(nic: dict[str, Any], pool_id: str) -> bool:
        return any(
            ref["id"].lower() == pool_id.lower()
            for config in nic["properties"]["ipConfigurations"]
            for ref in config["properties"].get("loadBalancerBackendAddressPools") or []
        )

    def _member_state(self, nic: dict[str, Any], pool_id: str) -> str:
        """The adminState of a NIC's membership of a NIC-based pool ("Down" when every one of its
        ipConfigurations in the pool is Down)."""
        states = {
            self.nic_admin.get((pool_id.lower(), c["id"].lower()), "None")
            for c in nic["properties"]["ipConfigurations"]
            if any(
                r["id"].lower() == pool_id.lower()
                for r in c["properties"].get("loadBalancerBackendAddressPools") or []
            )
        }
        return "Down" if states == {"Down"} else "None"

    def _pool_exists(self, pool_id: str) -> bool:
        wanted = pool_id.lower()
        for lb in self.lbs.values():
            if any(p["id"].lower() == wanted for p in lb["properties"]["backendAddressPools"]):
                return True
        for gw in self.appgws.values():
            if any(p["id"].lower() == wanted for p in gw["properties"]["backendAddressPools"]):
                return True
        return False

    # -- serving -----------------------------------------------------------------------------

    def get_nic(self, name: str) -> dict[str, Any]:
        with self.lock:
            answer = copy.deepcopy(self._nic(name))
            for mutation in list(self.mutations):
                if mutation.nic.lower() == name.lower():
                    self.mutations.remove(mutation)
                    self._apply_mutation(mutation)
            return answer

    def _apply_mutation(self, mutation: Mutation) -> None:
        nic = self._nic(mutation.nic)
        if mutation.tag is not None:
            nic.setdefault("tags", {})[mutation.tag[0]] = mutation.tag[1]
        if mutation.add_pool is not None:
            config = self._ipconfig(nic, mutation.add_pool[0])
            config["properties"].setdefault("loadBalancerBackendAddressPools", []).append(
                {"id": mutation.add_pool[1]}
            )
        nic["etag"] = new_etag()

    def list_nics(self, group: str | None = None) -> dict[str, Any]:
        """The NICs of one resource group (None: the whole subscription)."""
        with self.lock:
            return {"value": [copy.deepcopy(n) for n in self.nics.values() if _in_group(n, group)]}

    def put_nic(self, name: str, body: dict[str, Any], if_match: str | None) -> tuple[dict[str, Any], str]:
        """Apply a NIC PUT. Returns (answer body, operation id). Raises ArmError."""
        with self.lock:
            nic = self._nic(name)
            self._check_etag(nic, if_match)
            configs_in = ((body.get("properties") or {}).get("ipConfigurations")) or []
            if not isinstance(configs_in, list):
                raise ArmError(400, "InvalidRequestFormat", "ipConfigurations must be a list")
            for config_in in configs_in:
                props = config_in.get("properties") or {}
                for key in ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools"):
                    for ref in props.get(key) or []:
                        if not self._pool_exists(ref.get("id", "")):
                            raise ArmError(
                                400,
                                "InvalidResourceReference",
                                f"Resource {ref.get('id')} referenced by resource {nic['id']} was not found. "
                                "Please make sure that the referenced resource exists, and that both "
                                "resources are in the same region.",
                            )
            updated = copy.deepcopy(nic)
            # A PUT replaces the whole resource: tags left out of the body are gone afterwards.
            updated["tags"] = self._apply_tag_policy(check_tags(body.get("tags")))
            by_name = {c["name"].lower(): c for c in updated["properties"]["ipConfigurations"]}
            for config_in in configs_in:
                target = by_name.get(str(config_in.get("name", "")).lower())
                if target is None:
                    continue  # adding ipConfigurations is out of the emulator's scope
                props = config_in.get("properties") or {}
                for key in (
                    "loadBalancerBackendAddressPools",
                    "applicationGatewayBackendAddressPools",
                    "loadBalancerInboundNatRules",
                ):
                    target["properties"][key] = [{"id": r["id"]} for r in props.get(key) or []]
            etag = new_etag()
            updated["etag"] = etag
            for config in updated["properties"]["ipConfigurations"]:
                config["etag"] = etag
            operation = str(uuid.uuid4())
            fail = self.fail_next_lro > 0 and self.fail_lro_nic in (None, name.lower())
            if fail:
                self.fail_next_lro -= 1
            else:
                self.nics[name.lower()] = updated
                self._note_membership()
            self.operations[operation] = Operation(polls_left=self.settings.lro_polls, fail=fail)
            self.writes.append({"kind": "nic", "name": name, "if_match": if_match, "failed": fail})
            answer = copy.deepcopy(updated)
            answer["properties"]["provisioningState"] = "Updating"
            return answer, operation

    def _apply_tag_policy(self, tags: dict[str, str]) -> dict[str, str]:
        """What an Azure Policy on tags does to a write. Raises ArmError (403) for "deny"."""
        prefix = self.settings.tag_policy_prefix.lower()
        ours = [name for name in tags if name.lower().startswith(prefix)]
        if not ours or self.settings.tag_policy is None:
            return tags
        if self.settings.tag_policy == "deny":
            raise ArmError(
                403,
                "RequestDisallowedByPolicy",
                f"Resource was disallowed by policy. Policy identifiers: "
                f'\'[{{"policyAssignment":{{"name":"no-{prefix}-tags"}}}}]\'.',
            )
        return {k: v for k, v in tags.items() if k not in ours}

    def patch_nic_tags(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``UpdateTags`` (PATCH with ``{"tags": {...}}``): replaces the NIC's tags, nothing else."""
        with self.lock:
            nic = self._nic(name)
            nic["tags"] = self._apply_tag_policy(check_tags(body.get("tags")))
            nic["etag"] = new_etag()
            for config in nic["properties"]["ipConfigurations"]:
                config["etag"] = nic["etag"]
            self.writes.append({"kind": "nic-tags", "name": name, "if_match": None, "failed": False})
            return copy.deepcopy(nic)

    def tags_at_scope(self, name: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """The ``Microsoft.Resources/tags`` extension resource of a NIC (``{nic id}/providers/
        Microsoft.Resources/tags/default``): what Azure's built-in "Tag Contributor" role
        (``Microsoft.Resources/tags/*``, no access to the NIC itself) can do. GET reads the NIC's
        tags; PUT replaces them ("Tags - Create Or Update At Scope"); PATCH ("Tags - Update At
        Scope") with ``operation`` ``Replace`` (the whole set), ``Merge`` (add or overwrite these
        names) or ``Delete`` (these names; with a value, only where it matches). Nothing else of the
        NIC changes. https://learn.microsoft.com/rest/api/resources/tags/update-at-scope
        Raises ArmError."""
        with self.lock:
            nic = self._nic(name)
            scope = f"{nic['id']}/providers/Microsoft.Resources/tags/default"
            if method != "GET":
                given = check_tags((body.get("properties") or {}).get("tags"))
                current = dict(nic.get("tags") or {})
                operation = str(body.get("operation") or "Replace") if method == "PATCH" else "Replace"
                if operation == "Merge":
                    lowered = {k.lower() for k in given}
                    tags = {k: v for k, v in current.items() if k.lower() not in lowered} | given
                elif operation == "Delete":
                    drop = {k.lower(): v for k, v in given.items()}
                    tags = {
                        k: v
                        for k, v in current.items()
                        if k.lower() not in drop or drop[k.lower()] not in ("", v)
                    }
                elif operation == "Replace":
                    tags = given
                else:
                    raise ArmError(400, "InvalidTagOperation", f"The tag operation '{operation}' is invalid.")
                nic["tags"] = self._apply_tag_policy(check_tags(tags))
                nic["etag"] = new_etag()
                for config in nic["properties"]["ipConfigurations"]:
                    config["etag"] = nic["etag"]
                self.writes.append({"kind": "tags", "name": name, "if_match": None, "failed": False})
            return {
                "id": scope,
                "name": "default",
                "type": "Microsoft.Resources/tags",
                "properties": {"tags": copy.deepcopy(nic.get("tags") or {})},
            }

    def operation_status(self, operation: str) -> dict[str, Any]:
        with self.lock:
            op = self.operations.get(operation)
            if op is None:
                raise ArmError(404, "NotFound", f"operation {operation} not found")
            if op.polls_left > 0:
                op.polls_left -= 1
                return {"status": "InProgress"}
            if op.fail:
                return {
                    "status": "Failed",
                    "error": {
                        "code": "InternalServerError",
                        "message": "An error occurred while updating the network interface.",
                    },
                }
            return {"status": "Succeeded"}

    def get_lb(self, name: str) -> dict[str, Any]:
        with self.lock:
            lb = copy.deepcopy(self._lb(name))
            for pool in lb["properties"]["backendAddressPools"]:
                if "loadBalancerBackendAddresses" in pool["properties"]:
                    continue
                members = self._members(pool["id"], "loadBalancerBackendAddressPools")
                pool["properties"]["backendIPConfigurations"] = members
                pool["properties"]["loadBalancerBackendAddresses"] = [
                    self._nic_member(pool["id"], m["id"]) for m in members
                ]
            return lb

    def _nic_member(self, pool_id: str, ipconfig_id: str) -> dict[str, Any]:
        """A NIC-based pool's member as a backend address: the spec's LoadBalancerBackendAddress has
        ``networkInterfaceIPConfiguration`` ("Reference to IP address defined in network interfaces",
        read-only) and ``adminState``; Microsoft Learn ("Manage Administrative State in Azure Load
        Balancer") sets the admin state of a NIC-based pool's instance after it was added ("Admin state
        can't be configured during the creation of a NIC-based Load Balancer backend pool"). The
        name is the emulator's choice (``<NIC>_<ipConfiguration>``); no ipAddress (the IP is the
        NIC's)."""
        nic, _, ipconfig = ipconfig_id.rpartition("/ipConfigurations/")
        props: dict[str, Any] = {"networkInterfaceIPConfiguration": {"id": ipconfig_id}}
        state = self.nic_admin.get((pool_id.lower(), ipconfig_id.lower()))
        if state is not None:
            props["adminState"] = state
        return {"name": f"{nic.rsplit('/', 1)[-1]}_{ipconfig}", "properties": props}

    def _members(self, pool_id: str, key: str) -> list[dict[str, str]]:
        """A pool's ``backendIPConfigurations``: the NIC ipConfigurations whose ``key`` names it."""
        return [
            {"id": c["id"]}
            for n in self.nics.values()
            for c in n["properties"]["ipConfigurations"]
            if any(r["id"].lower() == pool_id.lower() for r in c["properties"].get(key) or [])
        ]

    def list_lbs(self, group: str | None = None) -> dict[str, Any]:
        with self.lock:
            return {"value": [self.get_lb(lb["name"]) for lb in self.lbs.values() if _in_group(lb, group)]}

    def get_pool(self, lb: str, pool: str) -> dict[str, Any]:
        with self.lock:
            entry = _named(self.get_lb(lb)["properties"]["backendAddressPools"], pool)
            if entry is None:
                raise ArmError(404, "NotFound", f"Resource {self.pool_id(lb, pool)} not found.")
            return entry

    def put_pool(
        self, lb: str, pool: str, body: dict[str, Any], if_match: str | None
    ) -> tuple[dict[str, Any], str]:
        with self.lock:
            entry = self._pool(lb, pool)
            self._check_etag(entry, if_match)  # the load balancer's etag: a sibling's write stales it
            addresses = (body.get("properties") or {}).get("loadBalancerBackendAddresses")
            if addresses is not None and "loadBalancerBackendAddresses" not in entry["properties"]:
                # A NIC-based pool: its members come from the NICs; only their adminState is set
                # here, matched by name (networkInterfaceIPConfiguration is read-only: the SDK does
                # not send it).
                current = {
                    str(a["name"]).lower(): a["properties"]["networkInterfaceIPConfiguration"]["id"]
                    for a in self.get_pool(lb, pool)["properties"]["loadBalancerBackendAddresses"]
                }
                for address in addresses:
                    ipconfig = current.get(str(address.get("name", "")).lower())
                    if ipconfig is None:
                        continue
                    state = (address.get("properties") or {}).get("adminState")
                    key = (entry["id"].lower(), ipconfig.lower())
                    if state in (None, "None"):
                        self.nic_admin.pop(key, None)
                    else:
                        self.nic_admin[key] = str(state)
            elif addresses is not None:
                entry["properties"]["loadBalancerBackendAddresses"] = [
                    {"name": a.get("name"), "properties": dict(a.get("properties") or {})} for a in addresses
                ]
            self._touch(self._lb(lb))
            self._note_membership()
            operation = str(uuid.uuid4())
            self.operations[operation] = Operation(polls_left=self.settings.lro_polls)
            self.writes.append(
                {"kind": "pool", "name": f"{lb}/{pool}", "if_match": if_match, "failed": False}
            )
            return self.get_pool(lb, pool), operation

    def get_app_gateway(self, name: str) -> dict[str, Any]:
        """An application gateway; each backend pool lists the NIC ipConfigurations referencing it."""
        with self.lock:
            gateway = copy.deepcopy(self._resource(self.appgws, "applicationGateways", name))
            for pool in gateway["properties"]["backendAddressPools"]:
                pool["properties"]["backendIPConfigurations"] = self._members(
                    pool["id"], "applicationGatewayBackendAddressPools"
                )
            return gateway
