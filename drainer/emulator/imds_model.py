"""The emulated IMDS: scheduled events with an incarnation counter, instance metadata, tokens.

Thread-safe: the HTTP server calls it from several threads.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from drainer.emulator.arm_model import ArmModel
from drainer.emulator.throttle import Throttle

# Microsoft Learn, "Scheduled Events for Linux VMs", Version and region availability: 2017-03-01
# (preview), 2017-08-01, 2017-11-01, 2019-01-01, 2019-04-01 ("Added support for Event Description"),
# 2019-08-01 (EventSource), 2020-07-01 (DurationInSeconds), all General Availability.
SCHEDULED_EVENTS_VERSIONS = (
    "2017-03-01",
    "2017-08-01",
    "2017-11-01",
    "2019-01-01",
    "2019-04-01",
    "2019-08-01",
    "2020-07-01",
)
INSTANCE_VERSIONS = (
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
)
TOKEN_VERSIONS = ("2018-02-01", "2019-08-01")
EVENT_TYPES = ("Freeze", "Reboot", "Redeploy", "Preempt", "Terminate")
# The OAuth token type of the emulated identity endpoint, not a secret (ruff S105, bandit B105).
_TOKEN_TYPE = "Bearer"  # noqa: S105  # nosec B105
# The minimum notice Azure gives per type (documented), used when a scenario gives none.
DEFAULT_NOTICE = {"Freeze": 900, "Reboot": 900, "Redeploy": 600, "Preempt": 30, "Terminate": 300}

# Verbatim from imds_msdocs_missing_api_version_error.json.
MISSING_API_VERSION = {
    "error": "Bad request. api-version is invalid or was not specified in the request. "
    "For more information refer to aka.ms/azureimds",
    "newest-versions": ["2025-04-07", "2024-07-17", "2024-03-15"],
}
# IMDS's token endpoint when the VM has no managed identity, or not the one asked for: HTTP 400 with
# this body, byte for byte (tests/data/imds_identity_not_found_400.json, from Azure/azure-sdk-for-go
# sdk/azidentity/managed_identity_client_test.go, "No identity assigned").
IDENTITY_NOT_FOUND = b'{"error":"invalid_request","error_description":"Identity not found"}'


@dataclass
class EmulatedEvent:
    event_id: str
    event_type: str
    resources: list[str]
    status: str = "Scheduled"
    not_before: datetime | None = None
    description: str = ""
    source: str = "Platform"
    duration: int = -1
    resource_type: str = "VirtualMachine"
    # Scripted timing: the impact takes this long once Started (the VM is down or paused), then the
    # event lingers this long (Azure removes it minutes after the impact) and disappears. An optional
    # second, shorter impact starts ``second_impact_after`` seconds after the first one ended (Microsoft:
    # "while the event is still in Started state, there may be another impact"). A Reboot or Redeploy
    # gives the VMs it lists a new boot id at the end of each impact.
    maintenance_seconds: float | None = None
    started_at: float | None = None  # time.monotonic() when it started
    linger_seconds: float = 0.0
    second_impact_after: float | None = None
    second_impact_seconds: float = 0.0
    impacts_done: int = 0  # impacts whose end has been applied (boot ids changed)
    approved: bool = False  # a StartRequests POST named it (it starts once its nodes are approved)

    def impacts(self) -> list[tuple[float, float]]:
        """The impact windows, as (start, end) on time.monotonic()."""
        if self.maintenance_seconds is None or self.started_at is None:
            return []
        first_end = self.started_at + self.maintenance_seconds
        windows = [(self.started_at, first_end)]
        if self.second_impact_after is not None:
            start = first_end + self.second_impact_after
            windows.append((start, start + self.second_impact_seconds))
        return windows

    def removal_at(self) -> float | None:
        windows = self.impacts()
        return None if not windows else max(end for _, end in windows) + self.linger_seconds

    def to_json(self, api_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "EventId": self.event_id,
            "EventType": self.event_type,
            "ResourceType": self.resource_type,
            "Resources": list(self.resources),
            "EventStatus": self.status,
            "NotBefore": ""
            if self.status == "Started" or self.not_before is None
            else format_datetime(self.not_before, usegmt=True),
        }
        # Fields arrive with api-versions: Description in 2019-04-01, EventSource in 2019-08-01,
        # DurationInSeconds in 2020-07-01.
        if api_version >= "2019-04-01":
            out["Description"] = self.description
        if api_version >= "2019-08-01":
            out["EventSource"] = self.source
        if api_version >= "2020-07-01":
            out["DurationInSeconds"] = self.duration
        return out


@dataclass
class Fault:
    """An injected failure for the next ``count`` requests whose path contains ``match``."""

    match: str = "/metadata/"
    status: int = 500
    count: int = 1
    body: str | None = None
    delay: float = 0.0
    retry_after: str | None = None
    reset: bool = False  # drop the connection without answering
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = None  # only requests with this method (default: any)
    # > 0: not a failure of its own: the usual answer (status, headers, body) is sent whole, then its
    # body one byte every ``drip`` seconds (a slow proxy or middlebox: each byte arrives well within
    # any read timeout, the answer never does). ``status``, ``body``, ``delay`` and ``reset`` are not
    # used then.
    drip: float = 0.0
    echo_token: bool = False  # "%TOKEN%" in ``body`` becomes the request's bearer token


@dataclass
class VmIdentity:
    name: str
    index: int
    subscription_id: str
    resource_group: str
    location: str
    scale_set: str = ""
    uniform: bool = False  # a scale-set Uniform instance (its NICs are read-only to the network API)
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Where the VM's /proc/sys/kernel/random/boot_id is played (a test's or benchmark's file), if anywhere.
    boot_id_file: str = ""
    # Its managed identities: the system-assigned one, and the client ids of user-assigned ones
    # (None: any client id asked for is taken as assigned).
    system_identity: bool = True
    user_identities: tuple[str, ...] | None = None

    def has_identity(self, client_id: str | None) -> bool:
        """Whether IMDS would issue a token for ``client_id`` (None: the system-assigned identity)."""
        if client_id is None:
            return self.system_identity or bool(self.user_identities)
        return self.user_identities is None or client_id.lower() in (c.lower() for c in self.user_identities)

    # The host node the VM runs on (VMs sharing one are approved together); "" means a node of its own.
    node: str = ""

    @property
    def host(self) -> str:
        return self.node.casefold() or f"own:{self.name.casefold()}"

    def reboot(self) -> None:
        """The VM came back from a reboot: a new boot id (written to ``boot_id_file``)."""
        self.boot_id = str(uuid.uuid4())
        self.write_boot_id()

    def write_boot_id(self) -> None:
        if self.boot_id_file:
            Path(self.boot_id_file).write_text(self.boot_id + "\n", encoding="utf-8")

    @property
    def vm_id(self) -> str:
        digest = hashlib.sha256(self.name.encode()).hexdigest()
        return str(uuid.UUID(digest[:32]))

    @property
    def resource_id(self) -> str:
        if self.uniform:
            return (
                f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.Compute/virtualMachineScaleSets/{self.scale_set}"
                f"/virtualMachines/{self.name.rpartition('_')[2]}"
            )
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{self.name}"
        )

    def nic_id(self, nic: str) -> str:
        """A scale-set Uniform instance's NIC id, under the Compute provider as Azure gives it
        (VirtualMachineScaleSetVM_Get_WithUserData.json, ``networkProfile.networkInterfaces``)."""
        return f"{self.resource_id}/networkInterfaces/{nic}"

    @property
    def private_ip(self) -> str:
        host = 4 + self.index  # 10.0.0.4 onwards, into 10.0.1.x past 251 VMs
        return f"10.0.{host // 256}.{host % 256}"

    def instance_json(self) -> dict[str, Any]:
        # A subset of imds_msdocs_full_instance_response_linux.json, same shapes (strings throughout).
        mac = f"000D3A{self.index:06X}"
        return {
            "compute": {
                "azEnvironment": "AZUREPUBLICCLOUD",
                "location": self.location,
                "name": self.name,
                "offer": "UbuntuServer",
                "osProfile": {
                    "adminUsername": "azureuser",
                    "computerName": self.name,
                    "disablePasswordAuthentication": "true",
                },
                "osType": "Linux",
                "platformFaultDomain": str(self.index % 2),
                "platformUpdateDomain": str(self.index % 5),
                "priority": "Regular",
                "provider": "Microsoft.Compute",
                "publisher": "Canonical",
                "resourceGroupName": self.resource_group,
                "resourceId": self.resource_id,
                "sku": "18.04-LTS",
                "subscriptionId": self.subscription_id,
                "tags": "",
                "vmId": self.vm_id,
                "vmScaleSetName": self.scale_set,
                "vmSize": "Standard_D2s_v3",
                "zone": "",
            },
            "network": {
                "interface": [
                    {
                        "ipv4": {
                            "ipAddress": [{"privateIpAddress": self.private_ip, "publicIpAddress": ""}],
                            "subnet": [{"address": "10.0.0.0", "prefix": "24"}],
                        },
                        "ipv6": {"ipAddress": []},
                        "macAddress": mac,
                    }
                ]
            },
        }


class ImdsModel:
    """The emulated IMDS state; every public method takes the lock."""

    def __init__(
        self,
        vms: list[str],
        *,
        subscription_id: str = "8d10da13-8125-4ba9-a717-bf7490507b3d",
        resource_group: str = "rg-drainer",
        location: str = "westeurope",
    ) -> None:
        self.lock = threading.RLock()
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.location = location
        self.arm = ArmModel(subscription_id, resource_group, location)
        self.tokens: set[str] = set()
        self.token_owner: dict[str, str] = {}  # token -> the VM whose identity asked for it
        self.throttle = Throttle()
        self.vms: dict[str, VmIdentity] = {}
        for name in vms:
            self.add_vm(name)
        self.incarnation = 1
        self.events: dict[str, EmulatedEvent] = {}
        self.raw_document: str | None = None
        self.faults: list[Fault] = []
        self.approvals: list[dict[str, Any]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=20000)
        self.tokens_issued = 0
        # Whether scheduled events answers carry an ETag (and honour If-None-Match with 304). Not
        # documented for IMDS: on by default here so the daemon's conditional GET is exercised.
        self.etags = True
        # (api-version, body, ETag) of the last rendered document; None after any change.
        self._rendered: tuple[str, str, str] | None = None

    # -- scripting ---------------------------------------------------------------------------

    def add_vm(
        self, name: str, scale_set: str = "", *, uniform: bool = False, nic_resource_group: str | None = None
    ) -> VmIdentity:
        """A VM, with one NIC named ``<name>-nic`` (in no pool yet; in the VM's resource group unless
        ``nic_resource_group`` names another)."""
        with self.lock:
            vm = VmIdentity(
                name,
                len(self.vms),
                self.subscription_id,
                self.resource_group,
                self.location,
                scale_set,
                uniform,
            )
            self.vms[name.casefold()] = vm
            self.arm.add_vm(vm.resource_id, name, vm.vm_id)
            nic_id = vm.nic_id(f"{name}-nic") if uniform else None
            self.arm.add_nic(
                f"{name}-nic", vm.resource_id, vm.private_ip, resource_group=nic_resource_group, nic_id=nic_id
            )
            return vm

    def share_node(self, node: str, names: list[str]) -> None:
        """These VMs run on one host node: an approval starts their events only once every one of
        them has approved (or at NotBefore). Raises KeyError for an unknown VM."""
        with self.lock:
            for name in names:
                self.vms[name.casefold()].node = node

    def default_vm(self) -> VmIdentity:
        with self.lock:
            return next(iter(self.vms.values()))

    def vm(self, name: str | None) -> VmIdentity | None:
        with self.lock:
            if name is None:
                return self.default_vm()
            return self.vms.get(name.casefold())

    def _bump(self) -> None:
        self.incarnation += 1
        self._rendered = None

    def schedule(
        self,
        event_type: str,
        resources: list[str],
        *,
        event_id: str | None = None,
        status: str = "Scheduled",
        not_before_in: float | None = None,
        duration: int = -1,
        maintenance_seconds: float | None = None,
        description: str = "",
        source: str = "Platform",
        linger_seconds: float = 0.0,
        second_impact_after: float | None = None,
        second_impact_seconds: float = 0.0,
    ) -> EmulatedEvent:
        """Add an event (or update one with the same id). Raises ValueError on bad input."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        if status not in ("Scheduled", "Started"):
            raise ValueError(f"unknown status {status!r}")
        notice = DEFAULT_NOTICE[event_type] if not_before_in is None else not_before_in
        with self.lock:
            event = EmulatedEvent(
                event_id=event_id or str(uuid.uuid4()).upper(),
                event_type=event_type,
                resources=list(resources),
                status=status,
                not_before=datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=notice),
                description=description or _DESCRIPTIONS.get(event_type, ""),
                source=source,
                duration=duration,
                maintenance_seconds=maintenance_seconds,
                started_at=time.monotonic() if status == "Started" else None,
                linger_seconds=float(linger_seconds),
                second_impact_after=second_impact_after,
                second_impact_seconds=float(second_impact_seconds),
            )
            self.events[event.event_id.casefold()] = event
            self._bump()
            return event

    def start(self, event_id: str) -> bool:
        with self.lock:
            event = self.events.get(event_id.casefold())
            if event is None:
                return False
            if event.status != "Started":
                event.status = "Started"
                event.started_at = time.monotonic()
                self._bump()
                self._start_approved()  # an approved event may have waited for this one's VMs
            return True

    def remove(self, event_id: str) -> bool:
        """Complete or cancel: the event disappears, as Azure does it."""
        with self.lock:
            if self.events.pop(event_id.casefold(), None) is None:
                return False
            self._bump()
            self._start_approved()  # an approved event may have waited for this one's VMs
            return True

    def reset(self, incarnation: int = 1) -> None:
        with self.lock:
            self.events.clear()
            self.raw_document = None
            self.faults.clear()
            self.approvals.clear()
            self.requests.clear()
            self.incarnation = incarnation
            self._rendered = None

    def set_incarnation(self, value: int) -> None:
        """Simulate the service being re-enabled: its counter restarts."""
        with self.lock:
            self.incarnation = value
            self._rendered = None

    # -- serving -----------------------------------------------------------------------------

    def _advance(self) -> None:
        # Azure starts a Scheduled event on its own once NotBefore has passed.
        now = datetime.now(timezone.utc)
        changed = False
        for event in self.events.values():
            if event.status == "Scheduled" and event.not_before and event.not_before <= now:
                event.status = "Started"
                event.started_at = time.monotonic()
                changed = True
        # A scripted impact ends: a Reboot or Redeploy gives its VMs a new boot id. Then, once it has
        # lingered, the event disappears, as a completed one does.
        clock = time.monotonic()
        for key, event in list(self.events.items()):
            ended = [end for _, end in event.impacts() if end <= clock]
            while event.impacts_done < len(ended):
                event.impacts_done += 1
                if event.event_type in ("Reboot", "Redeploy"):
                    for name in event.resources:
                        vm = self.vms.get(name.casefold())
                        if vm is not None:
                            vm.reboot()
            removal = event.removal_at()
            if removal is not None and clock >= removal:
                del self.events[key]
                changed = True
        if changed:
            self._bump()
            self._start_approved()

    def document_and_etag(self, api_version: str) -> tuple[str, str]:
        """The scheduled events document and its ETag. Rendered again only after a change (every
        change of an event bumps the incarnation): with a thousand events listed, rendering and
        hashing on every GET made the emulator, not drainer, the cost a benchmark measured."""
        with self.lock:
            if self.raw_document is not None:
                return self.raw_document, _etag(self.raw_document)
            self._advance()
            rendered = self._rendered
            if rendered is not None and rendered[0] == api_version:
                return rendered[1], rendered[2]
            body = json.dumps(
                {
                    "DocumentIncarnation": self.incarnation,
                    "Events": [e.to_json(api_version) for e in self.events.values()],
                }
            )
            self._rendered = (api_version, body, _etag(body))
            return body, self._rendered[2]

    def approve(self, body: bytes, vm: str) -> tuple[int, dict[str, Any]]:
        """POST StartRequests. Returns (status, body)."""
        try:
            decoded = json.loads(body)
            requests_list = decoded["StartRequests"]
            ids = [str(item["EventId"]) for item in requests_list]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "Bad request"}
        if not isinstance(requests_list, list) or not ids:
            return 400, {"error": "Bad request"}
        with self.lock:
            for event_id in ids:
                event = self.events.get(event_id.casefold())
                listed = list(event.resources) if event is not None else []
                if event is not None and event.status == "Scheduled":
                    event.approved = True
                self.approvals.append(
                    {
                        "event_id": event_id,
                        "vm": vm,
                        "at": time.time(),
                        "status": event.status if event is not None else None,
                        # Listed VMs still in a pool when the approval was sent (it may start their
                        # maintenance: see _start_approved).
                        "in_pool": self.arm.vms_in_pools(listed),
                    }
                )
            self._start_approved()
        return 200, {}

    def _start_approved(self) -> None:
        """Start the approved events whose host nodes have every approval they need.

        Microsoft Learn, "Scheduled Events for Linux VMs", Start an event: "The event may not start
        immediately upon approval. In some cases Azure requires the approval of all the VMs hosted on
        the node before proceeding with the event." (and, under High level overview: "If the VM is on
        shared infrastructure, the system will then wait for all other tenants on the same hardware to
        also approve the job or timeout"). One approval counts for every VM the event lists
        ("Acknowledging an event allows the event to proceed for all Resources in the event"). Here an
        approved event starts once no VM on the nodes of the VMs it lists is still listed in a
        Scheduled event nobody approved; with one VM per node (the default) that is at once."""
        waiting = {
            name.casefold()
            for e in self.events.values()
            if e.status == "Scheduled" and not e.approved
            for name in e.resources
        }
        for event in list(self.events.values()):
            if event.status != "Scheduled" or not event.approved:
                continue
            hosts = {self._host(name) for name in event.resources}
            if not any(self._host(name) in hosts for name in waiting):
                self.start(event.event_id)

    def _host(self, name: str) -> str:
        vm = self.vms.get(name.casefold())
        return vm.host if vm is not None else f"own:{name.casefold()}"

    def token(self, resource: str, client_id: str | None, vm: str = "") -> dict[str, Any]:
        now = int(time.time())
        token = "emulator." + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens_issued += 1
            self.tokens.add(token)
            self.token_owner[token] = vm
        return {
            "access_token": token,
            "client_id": client_id or "be5947ed-3560-4afe-9504-59967a63f810",
            "expires_in": "3599",
            "expires_on": str(now + 3599),
            "ext_expires_in": "3599",
            "not_before": str(now),
            "resource": resource,
            "token_type": _TOKEN_TYPE,
        }

    def take_fault(self, path: str, method: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method not in (None, method):
                    continue
                # "...$": the path must end there (web-0-nic, not web-0-nic2); otherwise a substring.
                if fault.match.endswith("$"):
                    matched = path.endswith(fault.match[:-1])
                else:
                    matched = fault.match in path
                if matched and fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return fault
            return None

    def impacted(self) -> list[str]:
        """The VMs inside an impact window right now (down or paused)."""
        with self.lock:
            self._advance()
            clock = time.monotonic()
            names = {
                name.casefold()
                for event in self.events.values()
                for start, end in event.impacts()
                if start <= clock < end
                for name in event.resources
            }
            return sorted(names)

    def set_identity(self, vm_name: str, system: bool, user: list[str] | None) -> bool:
        """Which managed identities ``vm_name`` has (``user``: client ids; None: any)."""
        with self.lock:
            vm = self.vms.get(vm_name.casefold())
            if vm is None:
                return False
            vm.system_identity = system
            vm.user_identities = None if user is None else tuple(user)
            return True

    def set_boot_id_file(self, vm_name: str, path: str) -> bool:
        with self.lock:
            vm = self.vms.get(vm_name.casefold())
            if vm is None:
                return False
            vm.boot_id_file = path
            vm.write_boot_id()
            return True

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            self._advance()
            return {
                "incarnation": self.incarnation,
                "events": [e.to_json("2020-07-01") for e in self.events.values()],
                "approvals": list(self.approvals),
                "vms": [vm.name for vm in self.vms.values()],
                "faults": len(self.faults),
                "tokens_issued": self.tokens_issued,
                "impacted": self.impacted(),
                "boot_ids": {vm.name: vm.boot_id for vm in self.vms.values()},
                "nodes": {vm.name: vm.node for vm in self.vms.values() if vm.node},
            }


_DESCRIPTIONS = {
    "Freeze": "Virtual machine is being paused because of a memory-preserving Live Migration operation.",
    "Reboot": "Virtual machine is going to be restarted as requested by authorized user.",
    "Redeploy": "Virtual machine is going to be redeployed to another host.",
    "Preempt": "Virtual machine is going to be evicted (Spot).",
    "Terminate": "Virtual machine is going to be deleted.",
}


def _etag(body: str) -> str:
    return '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
