"""A small client for the emulator's control API, used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

CONTROL = "/_emulator"


class EmulatorControl:
    """Scripts a running emulator over HTTP. Raises RuntimeError when a control call fails."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/") + CONTROL

    def _call(self, method: str, route: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        # S310: the URL is the emulator's own http base, never a file: or custom scheme.
        request = urllib.request.Request(f"{self.base}/{route}", data=data, method=method)  # noqa: S310
        # The control API is on loopback by construction; never route it through a proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                f"emulator control {method} {route}: HTTP {exc.code} {exc.read()[:200]!r}"
            ) from exc
        return json.loads(text) if text else None

    def schedule(self, event_type: str, resources: list[str], **fields: Any) -> str:
        event = self._call("POST", "events", {"type": event_type, "resources": resources, **fields})
        return str(event["EventId"])

    def start(self, event_id: str) -> None:
        self._call("POST", f"events/{event_id}/start")

    def remove(self, event_id: str) -> None:
        self._call("DELETE", f"events/{event_id}")

    def set_document(self, body: bytes | str) -> None:
        self._call("PUT", "document", raw=body.encode() if isinstance(body, str) else body)

    def clear_document(self) -> None:
        self._call("DELETE", "document")

    def fault(self, **fields: Any) -> None:
        """Fail matching requests: ``match`` is a substring of the path, or its end if it ends with $."""
        self._call("POST", "faults", fields)

    def drip(self, match: str, seconds: float, *, method: str | None = None, count: int = 1) -> None:
        """Answer the next ``count`` matching requests as usual, but their body one byte every
        ``seconds`` (each byte well within a read timeout, the whole answer far beyond any deadline)."""
        self.fault(match=match, method=method, count=count, drip=seconds)

    def clear_faults(self) -> None:
        """No more faults; answers dripping now end (mid-body)."""
        self._call("DELETE", "faults")

    def imds_etags(self, on: bool) -> None:
        """Whether scheduled events answers carry an ETag and honour If-None-Match (undocumented for
        IMDS: the emulator's default is on)."""
        self._call("POST", "etags", {"on": on})

    def set_incarnation(self, value: int) -> None:
        self._call("POST", "incarnation", {"value": value})

    def boot_id_file(self, vm: str, path: str) -> None:
        """Play ``vm``'s boot id in the file at ``path`` (a new one after each Reboot/Redeploy impact)."""
        self._call("POST", f"vms/{vm}/boot-id-file", {"path": path})

    def impacted(self) -> list[str]:
        """The VMs inside a scripted impact right now."""
        return list(self.state()["impacted"])

    def add_vm(
        self, name: str, scale_set: str = "", *, nic_resource_group: str | None = None, uniform: bool = False
    ) -> None:
        """A VM with one NIC ``<name>-nic`` (in another resource group when ``nic_resource_group``);
        ``uniform``: a scale-set Uniform instance (``<scale set>_<instance id>``)."""
        self._call(
            "POST",
            "vms",
            {
                "name": name,
                "scale_set": scale_set,
                "nic_resource_group": nic_resource_group,
                "uniform": uniform,
            },
        )

    def vm_identity(self, vm: str, *, system_assigned: bool, user_assigned: list[str] | None = None) -> None:
        """``vm``'s managed identities (``user_assigned``: client ids; None: any). Without one, the token
        endpoint answers HTTP 400 "Identity not found", as IMDS does."""
        self._call(
            "POST", f"vms/{vm}/identity", {"system_assigned": system_assigned, "user_assigned": user_assigned}
        )

    def share_node(self, node: str, vms: list[str]) -> None:
        """These VMs run on one host node: an approval starts their events only once every one of
        them has approved (Azure: "In some cases Azure requires the approval of all the VMs hosted
        on the node"), or at NotBefore. By default each VM has a node of its own."""
        self._call("POST", "nodes", {"node": node, "vms": vms})

    # -- ARM ---------------------------------------------------------------------------------

    def permissions(self, principal: str, assignments: list[dict[str, Any]]) -> None:
        """``principal``'s (a VM's identity) role assignments: ``[{"scope"?, "actions", "notActions"?}]``
        (scope: default the subscription). The permissions API answers with those at or above a scope."""
        self._call("POST", "arm/permissions", {"principal": principal, "assignments": assignments})

    def add_load_balancer(
        self,
        name: str,
        *,
        pools: list[str],
        ip_pools: list[str] | None = None,
        probe: bool = True,
        sku: str = "Standard",
        resource_group: str | None = None,
    ) -> str:
        """Returns the load balancer's id."""
        answer = self._call(
            "POST",
            "arm/loadbalancers",
            {
                "name": name,
                "pools": pools,
                "ip_pools": ip_pools or [],
                "probe": probe,
                "sku": sku,
                "resource_group": resource_group,
            },
        )
        return str(answer["id"])

    def add_asg(self, name: str, resource_group: str | None = None) -> str:
        """An application security group (the fleet's lease). Returns its id."""
        return str(self._call("POST", "arm/asgs", {"name": name, "resource_group": resource_group})["id"])

    def throttle(self, **settings: Any) -> None:
        """ARM throttling: ``enabled``, ``arm_read``/``arm_write`` = [bucket, refill per second] per
        principal, ``rp_read``/``rp_write`` = [requests, window seconds] per subscription."""
        self._call("POST", "arm/throttle", settings)

    def stats(self) -> dict[str, Any]:
        """{"principals": {vm: {reads, writes, throttled}}, "timeline": [[time, pool id, in service]]}"""
        answer: dict[str, Any] = self._call("GET", "arm/stats")
        return answer

    def reset_stats(self) -> None:
        self._call("POST", "arm/stats/reset", {})

    def load_balancer_with(self, lb: str, pool: str, vms: list[str]) -> None:
        """A load balancer with one NIC-based pool holding each VM's NIC (the usual availability set)."""
        self.add_load_balancer(lb, pools=[pool])
        for vm in vms:
            self.join(vm, lb, pool)

    def nics_in_pool(self, vm: str, count: int, lb: str, pool: str) -> list[str]:
        """``vm`` with ``count`` NICs (``<vm>-nic``, then ``<vm>-nic2`` ...), each in ``lb``'s ``pool``
        (which must exist). Returns the NIC names."""
        names = [f"{vm}-nic"] + [f"{vm}-nic{n}" for n in range(2, count + 1)]
        for name in names[1:]:
            self.add_nic(vm, name)
        for name in names:
            self.join(vm, lb, pool, nic=name)
        return names

    def join(
        self, vm: str, lb: str, pool: str, *, nic: str | None = None, ipconfig: str = "ipconfig1"
    ) -> None:
        """Put a VM's NIC (default ``<vm>-nic``) into a NIC-based pool."""
        self._call("POST", "arm/join", {"vm": vm, "nic": nic, "lb": lb, "pool": pool, "ipconfig": ipconfig})

    def join_app_gateway(self, vm: str, pool_id: str) -> None:
        self._call("POST", "arm/join", {"vm": vm, "pool_id": pool_id, "kind": "appgw"})

    def leave(self, vm: str, lb: str, pool: str, *, nic: str | None = None) -> None:
        """Take a VM's NIC (default ``<vm>-nic``) out of a NIC-based pool, as an operator would."""
        self._call("POST", "arm/leave", {"vm": vm, "nic": nic, "lb": lb, "pool": pool})

    def add_ip_member(
        self,
        lb: str,
        pool: str,
        vm: str,
        admin_state: str | None = None,
        *,
        vnet: str = "vnet",
        name: str | None = None,
    ) -> None:
        """Add a VM's private IP to an IP-based pool (in virtual network ``vnet``)."""
        self._call(
            "POST",
            "arm/ip-members",
            {"lb": lb, "pool": pool, "vm": vm, "admin_state": admin_state, "vnet": vnet, "name": name},
        )

    def add_nic(self, vm: str, name: str) -> None:
        self._call("POST", "arm/nics", {"vm": vm, "name": name})

    def add_app_gateway(self, name: str, pools: list[str]) -> None:
        self._call("POST", "arm/app-gateways", {"name": name, "pools": pools})

    def delete_pool(self, lb: str, pool: str) -> None:
        self._call("DELETE", f"arm/loadbalancers/{lb}/pools/{pool}")

    def membership(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = self._call("GET", "arm/membership")
        return result

    def nic(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"arm/nics/{name}")
        return result

    def nic_pools(self, name: str) -> list[str]:
        """The load-balancer backend pool ids a NIC's ipConfigurations reference, sorted."""
        body = self.nic(name)
        return sorted(
            ref["id"]
            for config in body["properties"]["ipConfigurations"]
            for ref in config["properties"].get("loadBalancerBackendAddressPools") or []
        )

    def arm_writes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "arm/writes")
        return result

    def arm_settings(
        self,
        *,
        lro_polls: int = 1,
        lro_retry_after: str | None = None,
        tag_policy: str | None = None,
        status_retry_after: str | None = None,
        put_delay: float = 0.0,
    ) -> None:
        """LRO polls before Succeeded, Retry-After on writes and on InProgress operation-status
        answers, seconds each NIC PUT takes to answer, and an Azure Policy on ``drainer*`` tags
        (``"deny"``: 403 RequestDisallowedByPolicy; ``"strip"``: silently dropped)."""
        self._call(
            "POST",
            "arm/settings",
            {
                "lro_polls": lro_polls,
                "lro_retry_after": lro_retry_after,
                "tag_policy": tag_policy,
                "status_retry_after": status_retry_after,
                "put_delay": put_delay,
            },
        )

    def lro_host(self, host: str | None) -> None:
        """Answer long-running writes with an ``Azure-AsyncOperation`` URL on ``host`` (host:port)."""
        self._call("POST", "arm/lro-host", {"host": host})

    def fail_next_lro(self, count: int = 1, *, nic: str | None = None) -> None:
        """The next ``count`` NIC writes (of ``nic`` only, if named) end Failed and change nothing."""
        self._call("POST", "arm/fail-lro", {"count": count, "nic": nic})

    def concurrent_change(
        self, nic: str, *, tag: tuple[str, str] | None = None, add_pool: tuple[str, str] | None = None
    ) -> None:
        """After the next GET of ``nic``, someone else changes it (a tag, or one more pool)."""
        self._call("POST", "arm/mutate", {"nic": nic, "tag": tag, "add_pool": add_pool})

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "state")
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "requests")
        return result
