"""Drain method ``admin-state``: set ``adminState`` to ``Down`` on this VM's backend addresses
(IP-based pools, ``loadBalancerBackendAddresses``, matched by private IP **and** virtual network):
no new connections, established TCP connections stay. Put back the previous value.

The change is recorded on the VM's primary NIC (``drainer:adm:...`` tags) *before* the pool write,
and the record is removed *after* the pool is put back: a crash between the two writes leaves the VM
in service with a record that the next run clears, or out of service with a record it restores.

Microsoft documents where admin state applies: only on Standard load balancers, only for
load-balancing rules that have a health probe, and not for inbound NAT rules. A pool outside that
is refused with the reason.
"""

from __future__ import annotations

from typing import Any

from azure.mgmt.network.models import LoadBalancer, NetworkInterface

from drainer.act import floor
from drainer.act.actuator import ActionContext
from drainer.act.lb_common import (
    ResourceId,
    discover_nics,
    read_modify_write,
    read_nic,
    refused,
    same,
    vnet_of,
)
from drainer.act.lb_nic import trusted_view
from drainer.base.errors import ActionError
from drainer.decide.core import Drain, Restore
from drainer.decide.nicrecord import AdminRecord, decode, plan_admin, subscription_of, summary_text
from drainer.io.arm import ArmError, Network
from drainer.io.recordkey import RecordKeyError
from drainer.store.state import LedgerEntry

METHOD = "admin-state"


def _state(address: Any) -> str:
    # The SDK gives a str-based enum: its str() is the member name, its value the wire text.
    value = address.admin_state
    return str(getattr(value, "value", value) or "None")


def _network_of(address: Any) -> str:
    if address.virtual_network is not None and address.virtual_network.id:
        return str(address.virtual_network.id).lower()
    if address.subnet is not None and address.subnet.id:
        return vnet_of(str(address.subnet.id))
    return ""


def _entry(record: AdminRecord) -> LedgerEntry:
    return LedgerEntry(METHOD, record.pool_id, record.address, METHOD, record.previous, "removed")


def _record(entry: LedgerEntry) -> AdminRecord:
    return AdminRecord(entry.resource_id, entry.item, entry.target)


class AdminStateDrain:
    """Drain method ``admin-state``."""

    name = "admin-state"

    def __init__(self, network: Network) -> None:
        self.network = network

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        if not floor.applies(ctx):
            return
        self.network.start()
        nics = self._nics(ctx)
        targets = self._targets(ctx, nics, action)
        if targets:
            floor.admit(self.network, ctx, action, self._leaving(nics, targets), "backend address")

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        self.network.start()
        self._out(ctx, action)

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        self.network.start()
        self._in(ctx)

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        self.network.start()
        return self._out(ctx, None) if out else self._in(ctx)

    # -- who am I on the network ---------------------------------------------------------------

    def _nics(self, ctx: ActionContext) -> list[NetworkInterface]:
        return [read_nic(self.network, nic_id) for nic_id in discover_nics(self.network, ctx)]

    @staticmethod
    def _addresses(nics: list[NetworkInterface]) -> set[tuple[str, str]]:
        """(private IP, virtual network id) of every ipConfiguration: an address in a pool is this
        VM's only when both match (the same range can exist in another virtual network)."""
        return {
            (str(config.private_ip_address), vnet_of(str(config.subnet.id)))
            for nic in nics
            for config in nic.ip_configurations or []
            if config.private_ip_address and config.subnet is not None and config.subnet.id
        }

    @staticmethod
    def _record_nic(nics: list[NetworkInterface]) -> NetworkInterface:
        return next((n for n in nics if n.primary), nics[0])

    # -- out ------------------------------------------------------------------------------------

    def _targets(
        self, ctx: ActionContext, nics: list[NetworkInterface], action: Drain | None
    ) -> list[tuple[LoadBalancer, Any]]:
        """The IP-based pools with an address of this VM. Raises ActionError, ArmError."""
        mine = self._addresses(nics)
        if not mine:
            raise ActionError("drain", "the VM's NICs have no private IP address in a subnet")
        targets: list[tuple[LoadBalancer, Any]] = []
        # Every load balancer of the subscription: an IP-based pool may be in another resource group.
        for lb in self.network.list_all_load_balancers():
            for pool in lb.backend_address_pools or []:
                if any(self._is_mine(a, mine) for a in pool.load_balancer_backend_addresses or []):
                    self._check_applies(ctx, lb, pool)
                    targets.append((lb, pool))
        if not targets and action is not None:
            ctx.log.warning(
                "vm has no address in any IP-based backend pool: nothing to take out",
                ips=sorted(ip for ip, _ in mine),
            )
        return targets

    def _leaving(
        self, nics: list[NetworkInterface], targets: list[tuple[LoadBalancer, Any]]
    ) -> floor.Leaving:
        """For the floor: the intent goes on the NIC that holds the record; the pools, with those
        drainer's records say this VM already left."""
        out = {r.pool_id for n in nics for r in decode(dict(n.tags or {}), subscription_of(str(n.id))).admin}
        record_nic = str(self._record_nic(nics).id)
        # A scale-set Uniform instance's NIC is read-only to the network API: no intent can go on it,
        # and the floor is then checked by this VM alone (its peers do see it out of the pool).
        uniform = "/virtualmachinescalesets/" in record_nic.lower()
        return floor.Leaving(
            nics=() if uniform else (record_nic,),
            own=frozenset(str(n.id).lower() for n in nics),
            pools=tuple(sorted({str(pool.id) for _, pool in targets} | out, key=str.lower)),
            addresses=frozenset(self._addresses(nics)),
        )

    def _out(self, ctx: ActionContext, action: Drain | None) -> tuple[bool, str]:
        nics = self._nics(ctx)
        mine = self._addresses(nics)
        targets = self._targets(ctx, nics, action)
        if not targets:
            return False, "in no IP-based backend pool"
        leaving = self._leaving(nics, targets)
        floor.admit(self.network, ctx, action, leaving, "backend address")
        records = [
            AdminRecord(str(pool.id), str(a.name), _state(a))
            for _, pool in targets
            for a in pool.load_balancer_backend_addresses or []
            if self._is_mine(a, mine) and _state(a) != "Down"
        ]
        if not records:
            return False, "already Down in every pool"
        # First the record (on the NIC, else locally), then the change.
        self._write_records(ctx, nics, records, add=True)
        ctx.checkpoint("admin-state-recorded")
        for index, (_, pool) in enumerate(targets):
            wanted = {r.address.lower(): "Down" for r in records if same(r.pool_id, pool.id)}
            try:
                self._set(ctx, str(pool.id), wanted)
            except ArmError as exc:
                if refused(exc):  # this write and the ones after it never happened: their records go
                    later = {str(p.id).lower() for _, p in targets[index:]}
                    undone = [r for r in records if r.pool_id.lower() in later]
                    self._write_records(ctx, nics, undone, add=False)
                    ctx.ledger.forget([_entry(r) for r in undone])
                raise
        forced = floor.forced_reason(action) if action is not None else ctx.forced
        floor.after_drain(self.network, ctx, leaving.pools, forced)
        return True, f"{len(records)} address(es) set Down"

    @staticmethod
    def _is_mine(address: Any, mine: set[tuple[str, str]]) -> bool:
        return (str(address.ip_address), _network_of(address)) in mine

    def _write_records(
        self, ctx: ActionContext, nics: list[NetworkInterface], records: list[AdminRecord], *, add: bool
    ) -> None:
        """Add (or remove) admin-state records on the VM's primary NIC; locally where it cannot hold
        them."""
        nic_id = str(self._record_nic(nics).id)
        if "/virtualmachinescalesets/" in nic_id.lower():
            # A scale-set Uniform instance's NIC is read-only to the network API: the record is local.
            if add:
                ctx.ledger.record([_entry(r) for r in records])
            return
        rid = ResourceId.parse(nic_id)
        keys = {r.key for r in records}
        summary = summary_text("admin state Down", ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ"), ctx.vm.name)

        def plan(nic: NetworkInterface) -> Any:
            view = trusted_view(ctx, nic)  # a forged record is never signed along with ours
            existing = decode(view.tags, subscription_of(nic_id)).admin
            if add:
                wanted = {r.key: r for r in existing} | {r.key: r for r in records}
            else:
                wanted = {r.key: r for r in existing if r.key not in keys}
            if set(wanted) == {r.key for r in existing}:
                return None
            change = plan_admin(view, wanted.values(), summary)
            if change is None:
                raise _NoRoomError
            return change._replace(tags=ctx.records.seal(nic_id, change.tags))

        def write(nic: NetworkInterface, change: Any) -> None:
            nic.tags = dict(change.tags) or None
            self.network.put_nic(rid.resource_group, rid.name, nic)

        try:
            read_modify_write(f"NIC {rid.name}", lambda: read_nic(self.network, nic_id), plan, write, ctx)
        except RecordKeyError as exc:
            ctx.records.unsigned(nic_id, exc)
        except (_NoRoomError, ArmError) as exc:
            if isinstance(exc, ArmError) and exc.status != 403:
                raise
            ctx.log.warning("keeping the admin-state record locally: the NIC cannot hold it", nic=rid.name)
        if add:
            ctx.ledger.record([_entry(r) for r in records])

    def _set(self, ctx: ActionContext, pool_id: str, wanted: dict[str, str]) -> bool:
        """Set addresses of one pool (name -> admin state) where they differ; False when the pool
        answered 404 (not yet confirmed gone). Raises ArmError, ActionError."""
        rid = ResourceId.parse(pool_id)

        def read() -> Any:
            lb = self.network.get_load_balancer(rid.resource_group, rid.name)
            return next((p for p in lb.backend_address_pools or [] if same(p.id, pool_id)), None)

        def plan(pool: Any) -> Any:
            if pool is None:
                return None
            changed = False
            for address in pool.load_balancer_backend_addresses or []:
                want = wanted.get(str(address.name).lower())
                if want is None:
                    continue
                if want == "Down" and _state(address) != "Down":
                    address.admin_state = "Down"
                    changed = True
                elif want != "Down" and _state(address) == "Down":
                    address.admin_state = want
                    changed = True
            return pool if changed else None

        def write(_: Any, pool: Any) -> None:
            self.network.put_pool(rid.resource_group, rid.name, rid.child, pool)

        read_modify_write(f"pool {rid.name}/{rid.child}", read, plan, write, ctx)
        ctx.log.info("set admin state", pool=f"{rid.name}/{rid.child}", addresses=sorted(wanted))
        return True

    # -- in -------------------------------------------------------------------------------------

    def _not_mine(
        self, pool_id: str, records: list[AdminRecord], mine: set[tuple[str, str]]
    ) -> list[AdminRecord]:
        rid = ResourceId.parse(pool_id)
        lb = self.network.get_load_balancer(rid.resource_group, rid.name)
        pool = next((p for p in lb.backend_address_pools or [] if same(p.id, pool_id)), None)
        addresses = {
            str(a.name).lower(): a for a in ((pool.load_balancer_backend_addresses or []) if pool else [])
        }
        return [
            r
            for r in records
            if r.address.lower() in addresses and not self._is_mine(addresses[r.address.lower()], mine)
        ]

    def _in(self, ctx: ActionContext) -> tuple[bool, str]:
        nics = self._nics(ctx)
        mine = self._addresses(nics)
        records = {
            r.key: r
            for nic in nics
            for r in decode(trusted_view(ctx, nic).tags, subscription_of(str(nic.id))).admin
        }
        for entry in ctx.ledger.entries(METHOD):
            records.setdefault(_record(entry).key, _record(entry))
        if not records:
            return False, "nothing to restore"
        done: list[AdminRecord] = []
        pending: list[str] = []
        by_pool: dict[str, list[AdminRecord]] = {}
        for record in records.values():
            by_pool.setdefault(record.pool_id.lower(), []).append(record)
        for pool_records in by_pool.values():
            pool_id = pool_records[0].pool_id
            state = self._pool_state(ctx, pool_id)
            if state == "absent":
                pending.append(pool_id.rsplit("/", 1)[-1])
                continue
            if state == "present":
                # Only this VM's own addresses (IP and virtual network), whatever a record says.
                theirs = self._not_mine(pool_id, pool_records, mine)
                for record in theirs:
                    ctx.log.warning(
                        "a record names an address that is not this VM's: ignored",
                        pool=pool_id.rsplit("/", 1)[-1],
                        address=record.address,
                    )
                keep = [r for r in pool_records if r not in theirs]
                self._set(ctx, pool_id, {r.address.lower(): r.previous for r in keep})
            else:
                ctx.log.warning("backend pool confirmed gone: dropped from the restore", pool=pool_id)
            done.extend(pool_records)
        ctx.checkpoint("admin-state-restored")
        self._write_records(ctx, nics, done, add=False)
        ctx.ledger.forget([_entry(r) for r in done])
        if pending:
            raise ActionError("restore", f"incomplete: pool {', '.join(pending)} answered 404; retried")
        ctx.absence.clear()
        return bool(done), f"{len(done)} address(es) restored"

    def _pool_state(self, ctx: ActionContext, pool_id: str) -> str:
        rid = ResourceId.parse(pool_id)
        try:
            lb = self.network.get_load_balancer(rid.resource_group, rid.name)
        except ArmError as exc:
            if exc.status != 404:
                raise
            lb = None
        if lb is not None and any(same(p.id, pool_id) for p in lb.backend_address_pools or []):
            ctx.absence.present(pool_id)
            return "present"
        return "gone" if ctx.absence.absent(pool_id, ctx.now()) else "absent"

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
            if (r.backend_address_pool is not None and same(r.backend_address_pool.id, pool.id))
            or any(same(p.id, pool.id) for p in r.backend_address_pools or [])
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


class _NoRoomError(Exception):
    """The NIC's tags cannot hold the record (Azure's limits)."""
