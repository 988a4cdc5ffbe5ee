"""This VM's identity as instance metadata gives it (``compute``), and drainer's cached form of it.
Pure: read by the state store and ``status`` without importing an HTTP client."""

from __future__ import annotations

from typing import Any, NamedTuple

from drainer.base.errors import MalformedDocumentError


class InstanceInfo(NamedTuple):
    """This VM's identity, from instance metadata ``compute``."""

    name: str
    resource_id: str = ""
    subscription_id: str = ""
    resource_group: str = ""
    vm_id: str = ""
    scale_set: str = ""
    location: str = ""
    private_ips: tuple[str, ...] = ()

    @property
    def is_uniform_scale_set_instance(self) -> bool:
        """Uniform instances have resource ids under ``virtualMachineScaleSets/{ss}/virtualMachines``."""
        return "/virtualmachinescalesets/" in self.resource_id.lower()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resource_id": self.resource_id,
            "subscription_id": self.subscription_id,
            "resource_group": self.resource_group,
            "vm_id": self.vm_id,
            "scale_set": self.scale_set,
            "location": self.location,
            "private_ips": list(self.private_ips),
        }

    @classmethod
    def from_json(cls, raw: object, *, source: str) -> InstanceInfo:
        """Read our cached form or IMDS ``compute``. Raises MalformedDocumentError."""
        if not isinstance(raw, dict):
            raise MalformedDocumentError("instance metadata is not an object", url=source)
        compute = raw.get("compute", raw)
        if not isinstance(compute, dict):
            raise MalformedDocumentError("instance metadata compute is not an object", url=source)

        def text(*keys: str) -> str:
            for key in keys:
                value = compute.get(key)
                if isinstance(value, str) and value:
                    return value
            return ""

        ips: list[str] = []
        cached_ips = compute.get("private_ips")
        if isinstance(cached_ips, list):
            ips = [ip for ip in cached_ips if isinstance(ip, str)]
        network = raw.get("network")
        interfaces = network.get("interface") if isinstance(network, dict) else None
        for interface in interfaces if isinstance(interfaces, list) else []:
            ipv4 = interface.get("ipv4") if isinstance(interface, dict) else None
            addresses = ipv4.get("ipAddress") if isinstance(ipv4, dict) else None
            for address in addresses if isinstance(addresses, list) else []:
                ip = address.get("privateIpAddress") if isinstance(address, dict) else None
                if isinstance(ip, str) and ip:
                    ips.append(ip)
        name = text("name")
        if not name:
            raise MalformedDocumentError("instance metadata has no compute.name", url=source)
        return cls(
            name=name,
            resource_id=text("resource_id", "resourceId"),
            subscription_id=text("subscription_id", "subscriptionId"),
            resource_group=text("resource_group", "resourceGroupName"),
            vm_id=text("vm_id", "vmId"),
            scale_set=text("scale_set", "vmScaleSetName"),
            location=text("location"),
            private_ips=tuple(ips),
        )
