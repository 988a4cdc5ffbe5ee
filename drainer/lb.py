"""Load-balancer drain methods: ``nic`` (remove the VM's NICs from their backend pools) and
``admin-state`` (set the VM's backend addresses to ``Down``).

Both follow the same discipline:

1. read the current resource (and its etag);
2. record in the ledger exactly what will change, *before* writing;
3. write with ``If-Match``; on 412 (someone else wrote meanwhile) re-read and go back to 1;
4. mark the ledger entries done.

A restore re-reads, puts back exactly the ledger's entries that are missing, keeps every other change
made meanwhile, writes with ``If-Match`` and forgets the entries. Both directions are idempotent, so a
run killed anywhere is completed by the next one.

Crash ambiguity, resolved towards "never lose a VM from a pool": a ledger entry still marked
``removing`` from an earlier, interrupted run whose reference is now absent is taken as removed by us
and restored later (it cannot be told apart from a concurrent removal by someone else in the same
seconds). Within one run there is no ambiguity: a 412 means our write did not happen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from azure.mgmt.network.models import (
    LoadBalancer,
    NetworkInterface,
    NetworkInterfaceIPConfiguration,
    SubResource,
)

from drainer.actions import ActionContext, Actuator
from drainer.arm import ArmError, Network
from drainer.config import Config
from drainer.core import Drain, Restore
from drainer.errors import ActionError, DrainHeldError
from drainer.imds import InstanceInfo
from drainer.ledger import Ledger
from drainer.state import LedgerEntry

MAX_CONFLICTS = 5  # 412 retries per resource and action
UNIFORM_HELP = (
    "this VM is a scale-set Uniform instance: its NICs are read-only through the network API (pool "
    "membership comes from the scale-set model, and a model upgrade would re-apply it); use "
    'method = "admin-state" for IP-based pools, or a health-probe based drain'
)


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


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


def _nic_of(ipconfig_id: str) -> str:
    """The NIC id an ipConfiguration id belongs to."""
    lowered = ipconfig_id.lower()
    cut = lowered.find("/ipconfigurations/")
    return ipconfig_id[:cut] if cut >= 0 else ipconfig_id


class _Base:
    name = "base"

    def __init__(self, network: Network, ctx_cfg: Any) -> None:
        self.network = network
        self.cfg = ctx_cfg

    def _nic_ids(self, ctx: ActionContext) -> list[str]:
        """The VM's NICs: named in the config, else the cache in state, else discovered (one list).

        Raises ActionError when none is found.
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
        cached = ctx.store.meta("nics") if ctx.store is not None else None
        if cached:
            data = json.loads(cached)
            if _same(data.get("vm"), vm.resource_id) and data.get("nics"):
                return list(data["nics"])
        found = [
            nic.id
            for nic in self.network.list_nics(vm.resource_group)
            if nic.id and nic.virtual_machine is not None and _same(nic.virtual_machine.id, vm.resource_id)
        ]
        if not found:
            raise ActionError(
                "discover NICs",
                f"no NIC in resource group {vm.resource_group} is attached to {vm.resource_id}; "
                "name them in [drain] nics",
            )
        if ctx.store is not None:
            ctx.store.set_meta({"nics": json.dumps({"vm": vm.resource_id, "nics": found})})
        ctx.log.info("discovered NICs", nics=found)
        return found

    def peers(
        self, vm: InstanceInfo, ledger: Ledger, listed: set[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """For the early-approval rule: (the listed VMs still in a pool this VM was taken out of,
        the listed VMs visible in this VM's resource group). One NIC list, plus one load-balancer
        list for admin-state. Raises ArmError."""
        self.network.start()
        me = vm.name.casefold()
        names_by_ip: dict[str, str] = {}
        in_rotation: set[str] = set()
        visible: set[str] = set()
        ours = {e.target.lower() for e in ledger.entries("nic") if e.kind == "lb-pool"}
        for nic in self.network.list_nics(vm.resource_group):
            if nic.virtual_machine is None or not nic.virtual_machine.id:
                continue
            name = str(nic.virtual_machine.id).rstrip("/").rsplit("/", 1)[-1].casefold()
            if name not in listed:
                continue
            visible.add(name)
            for config in nic.ip_configurations or []:
                if config.private_ip_address:
                    names_by_ip[str(config.private_ip_address)] = name
                if any(str(p.id).lower() in ours for p in config.load_balancer_backend_address_pools or []):
                    in_rotation.add(name)
        admin_pools = {e.resource_id.lower() for e in ledger.entries("admin-state")}
        if admin_pools:
            for lb in self.network.list_load_balancers(vm.resource_group):
                for pool in lb.backend_address_pools or []:
                    if str(pool.id).lower() not in admin_pools:
                        continue
                    for address in pool.load_balancer_backend_addresses or []:
                        owner = names_by_ip.get(str(address.ip_address))
                        if owner and (address.admin_state or "None") != "Down":
                            in_rotation.add(owner)
        return frozenset(in_rotation - {me}), frozenset(visible)

    def _forget_nic_cache(self, ctx: ActionContext) -> None:
        if ctx.store is not None:
            ctx.store.set_meta({"nics": ""})

    def _check_in_service(self, ctx: ActionContext, action: Drain, pools: dict[str, int], what: str) -> None:
        """Hold the drain when a pool would be left with fewer than ``min_in_service`` other members.

        ``pools``: pool id -> other members in service. Raises DrainHeldError.
        """
        minimum = ctx.config.drain.min_in_service
        short = {p: n for p, n in pools.items() if n < minimum}
        if not short:
            return
        summary = ", ".join(
            f"{ResourceId.parse(p).name}/{ResourceId.parse(p).child}: {n}" for p, n in short.items()
        )
        urgent = {"Preempt", "Terminate"} & set(action.event_types)
        if urgent:
            ctx.log.warning(
                "draining below min_in_service: the VM goes away anyway",
                event_types=sorted(urgent),
                pools=summary,
                min_in_service=minimum,
            )
            return
        raise DrainHeldError(
            what,
            f"held: fewer than min_in_service={minimum} other {what} members in service ({summary})",
        )


class NicDrain(_Base):
    """Drain method ``nic``: remove load-balancer (and optionally Application Gateway) backend pool
    references from every ipConfiguration of the VM's NICs; put back exactly those."""

    name = "nic"

    def _kinds(self, ctx: ActionContext) -> tuple[str, ...]:
        return ("lb-pool", "appgw-pool") if ctx.config.drain.application_gateways else ("lb-pool",)

    @staticmethod
    def _refs(config: NetworkInterfaceIPConfiguration, kind: str) -> list[Any]:
        if kind == "lb-pool":
            if config.load_balancer_backend_address_pools is None:
                config.load_balancer_backend_address_pools = []
            return config.load_balancer_backend_address_pools  # type: ignore[no-any-return]
        if config.application_gateway_backend_address_pools is None:
            config.application_gateway_backend_address_pools = []
        return config.application_gateway_backend_address_pools  # type: ignore[no-any-return]

    def _present(self, nic: NetworkInterface, kinds: Iterable[str]) -> list[LedgerEntry]:
        out = []
        for config in nic.ip_configurations or []:
            for kind in kinds:
                for ref in self._refs(config, kind):
                    out.append(LedgerEntry("nic", str(nic.id), str(config.name), kind, str(ref.id)))
        return out

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        if ctx.vm.is_uniform_scale_set_instance:
            raise ActionError("drain", UNIFORM_HELP)
        self.network.start()
        nic_ids = self._nic_ids(ctx)
        kinds = self._kinds(ctx)
        nics = {}
        for nic_id in nic_ids:
            rid = ResourceId.parse(nic_id)
            try:
                nics[nic_id] = self.network.get_nic(rid.resource_group, rid.name)
            except ArmError as exc:
                if exc.status == 404:
                    self._forget_nic_cache(ctx)
                raise
        planned = [e for nic in nics.values() for e in self._present(nic, kinds)]
        if not planned:
            ctx.log.warning("vm is in no backend pool: nothing to take out", nics=nic_ids)
        self._check_in_service(ctx, action, self._others_in_service(planned, nic_ids), "pool")
        for nic_id, nic in nics.items():
            self._drain_nic(ctx, nic_id, nic, kinds)

    def _others_in_service(self, planned: list[LedgerEntry], nic_ids: list[str]) -> dict[str, int]:
        ours = {n.lower() for n in nic_ids}
        counts: dict[str, int] = {}
        lbs: dict[str, LoadBalancer] = {}
        for entry in planned:
            if entry.kind != "lb-pool" or entry.target in counts:
                continue
            rid = ResourceId.parse(entry.target)
            lb = lbs.get(rid.name.lower())
            if lb is None:
                lb = lbs[rid.name.lower()] = self.network.get_load_balancer(rid.resource_group, rid.name)
            pool = next((p for p in lb.backend_address_pools or [] if _same(p.id, entry.target)), None)
            members = [c.id for c in (pool.backend_ip_configurations or [])] if pool else []
            counts[entry.target] = len({_nic_of(m).lower() for m in members if m} - ours)
        return counts

    def _drain_nic(
        self, ctx: ActionContext, nic_id: str, nic: NetworkInterface, kinds: tuple[str, ...]
    ) -> None:
        rid = ResourceId.parse(nic_id)
        earlier = {e.key: e for e in ctx.ledger.entries("nic") if _same(e.resource_id, nic.id)}
        for _ in range(MAX_CONFLICTS):
            present = self._present(nic, kinds)
            if not present:
                break
            # Record exactly what this write removes, before the write.
            ctx.ledger.record(present)
            ctx.checkpoint("nic-recorded")
            for config in nic.ip_configurations or []:
                for kind in kinds:
                    self._refs(config, kind).clear()
            try:
                self.network.put_nic(rid.resource_group, rid.name, nic)
            except ArmError as exc:
                if exc.status != 412:
                    raise
                # Our write did not happen: undo this attempt's bookkeeping, re-read, try again.
                ctx.ledger.forget([e for e in present if e.key not in earlier])
                ctx.ledger.record(list(earlier.values()))
                ctx.log.info("NIC changed meanwhile (412); re-reading", nic=rid.name)
                nic = self.network.get_nic(rid.resource_group, rid.name)
                continue
            ctx.checkpoint("nic-written")
            ctx.ledger.record([e._replace(status="removed") for e in present])
            ctx.log.info("removed NIC from pools", nic=rid.name, pools=sorted({e.target for e in present}))
            break
        else:
            raise ActionError("drain", f"NIC {rid.name} kept changing ({MAX_CONFLICTS} conflicts in a row)")
        # Entries of an interrupted earlier run whose reference is gone were removed by that run.
        leftover = [
            e for e in ctx.ledger.entries("nic") if _same(e.resource_id, nic.id) and e.status == "removing"
        ]
        ctx.ledger.record([e._replace(status="removed") for e in leftover])

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        entries = ctx.ledger.entries("nic")
        if not entries:
            return
        self.network.start()
        by_nic: dict[str, list[LedgerEntry]] = {}
        for entry in entries:
            by_nic.setdefault(entry.resource_id, []).append(entry)
        exists = _PoolChecker(self.network, ctx)
        for nic_id, nic_entries in by_nic.items():
            self._restore_nic(ctx, nic_id, nic_entries, exists)

    def _restore_nic(
        self, ctx: ActionContext, nic_id: str, entries: list[LedgerEntry], exists: _PoolChecker
    ) -> None:
        rid = ResourceId.parse(nic_id)
        for _ in range(MAX_CONFLICTS):
            try:
                nic = self.network.get_nic(rid.resource_group, rid.name)
            except ArmError as exc:
                if exc.status == 404:
                    ctx.log.warning("NIC no longer exists: nothing to restore on it", nic=rid.name)
                    ctx.ledger.forget(entries)
                    return
                raise
            added = []
            for entry in entries:
                config = next((c for c in nic.ip_configurations or [] if _same(c.name, entry.item)), None)
                if config is None:
                    ctx.log.warning(
                        "ipConfiguration no longer exists: skipped", nic=rid.name, ipconfig=entry.item
                    )
                    continue
                refs = self._refs(config, entry.kind)
                if any(_same(r.id, entry.target) for r in refs):
                    continue  # already back (a previous run, or someone else)
                if not exists(entry):
                    ctx.log.warning("backend pool no longer exists: skipped", nic=rid.name, pool=entry.target)
                    continue
                refs.append(SubResource(id=entry.target))
                added.append(entry.target)
            if not added:
                break
            try:
                self.network.put_nic(rid.resource_group, rid.name, nic)
            except ArmError as exc:
                if exc.status != 412:
                    raise
                ctx.log.info("NIC changed meanwhile (412); re-reading", nic=rid.name)
                continue
            ctx.checkpoint("nic-restored")
            ctx.log.info("returned NIC to pools", nic=rid.name, pools=sorted(set(added)))
            break
        else:
            raise ActionError("restore", f"NIC {rid.name} kept changing ({MAX_CONFLICTS} conflicts in a row)")
        ctx.ledger.forget(entries)


class _PoolChecker:
    """Whether a backend pool (load balancer or application gateway) still exists; one read per parent."""

    def __init__(self, network: Network, ctx: ActionContext) -> None:
        self.network = network
        self.ctx = ctx
        self._pools: dict[str, set[str] | None] = {}

    def __call__(self, entry: LedgerEntry) -> bool:
        rid = ResourceId.parse(entry.target)
        key = f"{entry.kind}:{rid.resource_group}/{rid.name}".lower()
        if key not in self._pools:
            try:
                if entry.kind == "appgw-pool":
                    parent: Any = self.network.get_app_gateway(rid.resource_group, rid.name)
                else:
                    parent = self.network.get_load_balancer(rid.resource_group, rid.name)
            except ArmError as exc:
                if exc.status != 404:
                    raise
                self._pools[key] = None
            else:
                self._pools[key] = {str(p.id).lower() for p in parent.backend_address_pools or []}
        pools = self._pools[key]
        return pools is not None and entry.target.lower() in pools


class AdminStateDrain(_Base):
    """Drain method ``admin-state``: set ``adminState`` to ``Down`` on this VM's backend addresses
    (IP-based pools, ``loadBalancerBackendAddresses``): no new connections, established TCP
    connections stay. Put back the previous value.

    Microsoft documents where admin state applies: only on Standard load balancers, only for
    load-balancing rules that have a health probe, and not for inbound NAT rules. A pool outside that
    is refused with the reason.
    """

    name = "admin-state"

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        self.network.start()
        ips = set(ctx.vm.private_ips)
        if not ips:
            raise ActionError("drain", "instance metadata gave no private IP address for this VM")
        targets: list[tuple[LoadBalancer, Any, list[Any]]] = []
        for lb in self.network.list_load_balancers(ctx.vm.resource_group):
            for pool in lb.backend_address_pools or []:
                mine = [a for a in pool.load_balancer_backend_addresses or [] if a.ip_address in ips]
                if mine:
                    self._check_applies(ctx, lb, pool)
                    targets.append((lb, pool, mine))
        if not targets:
            ctx.log.warning(
                "vm has no address in any IP-based backend pool: nothing to take out", ips=sorted(ips)
            )
            return
        in_service = {
            str(pool.id): sum(
                1
                for a in pool.load_balancer_backend_addresses or []
                if a.ip_address not in ips and (a.admin_state or "None") != "Down"
            )
            for _, pool, _ in targets
        }
        self._check_in_service(ctx, action, in_service, "backend address")
        for lb, pool, _ in targets:
            self._set_state(ctx, lb, pool, ips)

    @staticmethod
    def _check_applies(ctx: ActionContext, lb: LoadBalancer, pool: Any) -> None:
        if lb.sku is None or (lb.sku.name or "").lower() != "standard":
            raise ActionError(
                "drain",
                f"admin state needs a Standard load balancer; {lb.name} is "
                f"{lb.sku.name if lb.sku else 'of unknown SKU'}",
            )
        rules = [
            r
            for r in lb.load_balancing_rules or []
            if (r.backend_address_pool is not None and _same(r.backend_address_pool.id, pool.id))
            or any(_same(p.id, pool.id) for p in r.backend_address_pools or [])
        ]
        unprobed = [r.name for r in rules if r.probe is None]
        if not rules or unprobed:
            which = (
                f"rules {', '.join(str(n) for n in unprobed)} have"
                if unprobed
                else "no load-balancing rule has"
            )
            raise ActionError(
                "drain",
                f"admin state has no effect on pool {lb.name}/{pool.name}: {which} no health probe "
                "(admin state only works for probed load-balancing rules)",
            )
        if lb.inbound_nat_rules:
            ctx.log.warning("inbound NAT rules are not affected by admin state", load_balancer=lb.name)

    def _set_state(self, ctx: ActionContext, lb: LoadBalancer, pool: Any, ips: set[str]) -> None:
        pool_rid = ResourceId.parse(str(pool.id))
        for _ in range(MAX_CONFLICTS):
            changes = [
                LedgerEntry("admin-state", str(pool.id), str(a.name), "admin-state", a.admin_state or "None")
                for a in pool.load_balancer_backend_addresses or []
                if a.ip_address in ips and (a.admin_state or "None") != "Down"
            ]
            if not changes:
                return
            ctx.ledger.record(changes)
            ctx.checkpoint("admin-state-recorded")
            for address in pool.load_balancer_backend_addresses or []:
                if address.ip_address in ips:
                    address.admin_state = "Down"
            try:
                self.network.put_pool(pool_rid.resource_group, pool_rid.name, pool_rid.child, pool)
            except ArmError as exc:
                if exc.status != 412:
                    raise
                ctx.ledger.forget(changes)
                pool = self._reload_pool(pool_rid, str(pool.id))
                continue
            ctx.ledger.record([c._replace(status="removed") for c in changes])
            ctx.log.info(
                "set admin state Down",
                pool=f"{pool_rid.name}/{pool_rid.child}",
                addresses=[c.item for c in changes],
            )
            return
        raise ActionError(
            "drain", f"pool {pool_rid.child} kept changing ({MAX_CONFLICTS} conflicts in a row)"
        )

    def _reload_pool(self, rid: ResourceId, pool_id: str) -> Any:
        lb = self.network.get_load_balancer(rid.resource_group, rid.name)
        pool = next((p for p in lb.backend_address_pools or [] if _same(p.id, pool_id)), None)
        if pool is None:
            raise ActionError("drain", f"backend pool {pool_id} disappeared")
        return pool

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        entries = ctx.ledger.entries("admin-state")
        if not entries:
            return
        self.network.start()
        by_pool: dict[str, list[LedgerEntry]] = {}
        for entry in entries:
            by_pool.setdefault(entry.resource_id, []).append(entry)
        for pool_id, pool_entries in by_pool.items():
            rid = ResourceId.parse(pool_id)
            for _ in range(MAX_CONFLICTS):
                try:
                    pool = self._reload_pool(rid, pool_id)
                except ArmError as exc:
                    if exc.status != 404:
                        raise
                    pool = None
                except ActionError:
                    pool = None
                if pool is None:
                    ctx.log.warning("backend pool no longer exists: skipped", pool=pool_id)
                    break
                previous = {e.item.lower(): e.target for e in pool_entries}
                changed = False
                for address in pool.load_balancer_backend_addresses or []:
                    want = previous.get(str(address.name).lower())
                    if want is not None and (address.admin_state or "None") == "Down" and want != "Down":
                        address.admin_state = want
                        changed = True
                if not changed:
                    break
                try:
                    self.network.put_pool(rid.resource_group, rid.name, rid.child, pool)
                except ArmError as exc:
                    if exc.status != 412:
                        raise
                    continue
                ctx.log.info(
                    "restored admin state", pool=f"{rid.name}/{rid.child}", addresses=sorted(previous)
                )
                break
            else:
                raise ActionError(
                    "restore", f"pool {rid.child} kept changing ({MAX_CONFLICTS} conflicts in a row)"
                )
            ctx.ledger.forget(pool_entries)


def make_lb_actuator(config: Config, vm: InstanceInfo, log: Any) -> Actuator:
    """The actuator for ``[drain] method`` nic or admin-state, over a (dry-run wrapped) ARM client."""
    from drainer.arm import ArmNetwork, DryRunNetwork  # noqa: PLC0415

    network: Network = ArmNetwork(
        config.azure, subscription_id=vm.subscription_id, imds_endpoint=config.imds.endpoint
    )
    if config.dry_run:
        network = DryRunNetwork(network, log)
    if config.drain.method == "admin-state":
        return AdminStateDrain(network, config)
    return NicDrain(network, config)


__all__ = ["AdminStateDrain", "Ledger", "NicDrain", "ResourceId", "make_lb_actuator"]
