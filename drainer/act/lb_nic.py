"""Drain method ``nic``: take the VM's NICs out of their backend pools, recording on each NIC (in the
same PUT) what was taken out; put back exactly that, removing the record in the same PUT.

The record on the NIC (``drainer.decide.nicrecord``) survives the loss of the state directory, and a
refused write records nothing. It is signed (``drainer.act.records``): a record drainer cannot verify
is reported and never acted on. The local ledger keeps a copy of every record drainer wrote: a
restore puts back the union of the two (either copy is enough), saying so when they disagree. Where
an Azure Policy refuses or rewrites drainer's tags, or the record does not fit Azure's tag limits,
that NIC's record is kept in the local ledger only (written before the write, as the only place it
can be).
"""

from __future__ import annotations

from typing import Any

from azure.mgmt.network.models import NetworkInterface, SubResource

from drainer.act import floor
from drainer.act.actuator import ActionContext
from drainer.act.fanout import each_nic
from drainer.act.lb_common import (
    Presence,
    ResourceId,
    by_policy,
    discover_nics,
    read_modify_write,
    read_nic,
    refused,
    same,
)
from drainer.base import metrics
from drainer.base.errors import ActionError
from drainer.decide.core import Drain, Restore
from drainer.decide.nicrecord import (
    NicView,
    Plan,
    Ref,
    decode,
    is_ours,
    plan_drain,
    plan_restore,
    subscription_of,
    summary_text,
)
from drainer.io.arm import ArmError, Network
from drainer.io.recordkey import RecordKeyError
from drainer.store.state import LedgerEntry

UNIFORM_HELP = (
    "this VM is a scale-set Uniform instance: its NICs are read-only through the network API (pool "
    "membership comes from the scale-set model, and a model upgrade would re-apply it); use "
    'method = "admin-state" for IP-based pools, or a health-probe based drain'
)
_LISTS = {
    "lb-pool": "load_balancer_backend_address_pools",
    "appgw-pool": "application_gateway_backend_address_pools",
}
LOCAL = ("removing", "removed")  # ledger statuses of a record kept locally (not on the NIC)
CACHED = "on-nic"  # ledger status of a copy of a NIC record, for `status` only


def view_of(nic: NetworkInterface) -> NicView:
    refs = tuple(
        Ref(str(config.name), kind, str(ref.id))
        for config in nic.ip_configurations or []
        for kind, attr in _LISTS.items()
        for ref in getattr(config, attr) or []
    )
    return NicView(str(nic.id), dict(nic.tags or {}), refs)


def trusted_view(ctx: ActionContext, nic: NetworkInterface) -> NicView:
    """The NIC as drainer may act on it: its tags without the records that do not verify."""
    view = view_of(nic)
    return view._replace(tags=ctx.records.trusted(view.nic_id, view.tags))


def apply(nic: NetworkInterface, plan: Plan) -> None:
    """Make the SDK object say what the plan says (existing reference objects are kept as they are)."""
    wanted = {r.key for r in plan.refs}
    for config in nic.ip_configurations or []:
        for kind, attr in _LISTS.items():
            current = list(getattr(config, attr) or [])
            have = {(str(config.name).lower(), kind, str(r.id).lower()) for r in current}
            kept = [r for r in current if (str(config.name).lower(), kind, str(r.id).lower()) in wanted]
            added = [
                SubResource(id=r.pool_id)
                for r in plan.refs
                if r.kind == kind and same(r.ipconfig, config.name) and r.key not in have
            ]
            setattr(config, attr, kept + added)
    nic.tags = dict(plan.tags) or None


def _entry(nic_id: str, ref: Ref, status: str) -> LedgerEntry:
    return LedgerEntry("nic", nic_id, ref.ipconfig, ref.kind, ref.pool_id, status)


def _ref(entry: LedgerEntry) -> Ref:
    return Ref(entry.item, entry.kind, entry.target)


def _short(pool_id: str) -> str:
    """``<load balancer>/<pool>`` of a pool id, for log lines and messages."""
    rid = ResourceId.parse(pool_id)
    return f"{rid.name}/{rid.child}"


def _why(ctx: ActionContext) -> str:
    if ctx.events:
        first = ctx.events[0].event
        more = f" +{len(ctx.events) - 1}" if len(ctx.events) > 1 else ""
        return f"{first.event_type.value} {first.event_id}{more}"
    return "held out by drainer"


def _compare(
    ctx: ActionContext, nic_id: str, recorded: list[Ref], mine: list[LedgerEntry], present: set[Any]
) -> None:
    """Say so when the NIC's verified record and the local copies of its drain (``mine``) differ,
    pools already back on the NIC aside; a restore puts back the union."""
    cached = {_ref(e).key: e for e in mine if e.status == CACHED}
    if not cached:
        return  # no copy of a NIC record here (the state was lost, or the record was never on the NIC)
    on_nic = {r.key for r in recorded}
    lacking = sorted(e.target for k, e in cached.items() if k not in on_nic and k not in present)
    if lacking:
        ctx.records.disagree(
            nic_id, "the NIC's record lacks pools the local copy has (its tags replaced?)", lacking
        )
    known = {_ref(e).key for e in mine}
    extra = sorted(r.pool_id for r in recorded if r.key not in known and r.key not in present)
    if extra:
        ctx.records.disagree(nic_id, "the local copy lacks pools the NIC's record has", extra)


class NicDrain:
    """Drain method ``nic``."""

    name = "nic"

    def __init__(self, network: Network) -> None:
        self.network = network

    def _kinds(self, ctx: ActionContext) -> tuple[str, ...]:
        return ("lb-pool", "appgw-pool") if ctx.config.drain.application_gateways else ("lb-pool",)

    # -- out of rotation ---------------------------------------------------------------------

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        if ctx.vm.is_uniform_scale_set_instance:
            raise ActionError("drain", UNIFORM_HELP)
        if not floor.applies(ctx):
            return
        self.network.start()
        nic_ids, nics, planned = self._planned(ctx)
        if planned:
            floor.admit(self.network, ctx, action, self._leaving(ctx, nic_ids, nics, planned), "pool")

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        if ctx.vm.is_uniform_scale_set_instance:
            raise ActionError("drain", UNIFORM_HELP)
        self.network.start()
        self._out(ctx, action)

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        self.network.start()
        if out:
            if ctx.vm.is_uniform_scale_set_instance:
                return False, "nothing to do (scale-set Uniform instance)"
            return self._out(ctx, None)
        return self._in(ctx)

    def _planned(self, ctx: ActionContext) -> tuple[list[str], dict[str, NetworkInterface], list[Ref]]:
        """The VM's NICs, as read now, and the pool references a drain takes out of them."""
        kinds = self._kinds(ctx)
        # Found again for every action (a NIC attached later is drained too); the drain that follows
        # its grant by the floor (before the pre-drain hooks) uses the NICs found for the grant.
        found = [a.nics for a in floor.granted(ctx) if a.nics]
        nic_ids = list(found[-1]) if found else discover_nics(self.network, ctx)
        nics = {nic_id: read_nic(self.network, nic_id) for nic_id in nic_ids}
        return nic_ids, nics, [r for nic in nics.values() for r in view_of(nic).refs if r.kind in kinds]

    def _leaving(
        self, ctx: ActionContext, nic_ids: list[str], nics: dict[str, NetworkInterface], planned: list[Ref]
    ) -> floor.Leaving:
        """For the floor: the NICs that leave pools, and the pools (those drainer's records say this
        VM already left too: a retry after a crash between two NIC writes plans only what is left)."""
        out = self._already_out(ctx, nics, planned)
        return floor.Leaving(
            nics=tuple(sorted({n for n, nic in nics.items() for r in view_of(nic).refs if r in planned})),
            own=frozenset(n.lower() for n in nic_ids),
            pools=tuple(sorted({r.pool_id for r in planned} | out, key=str.lower)),
            discovered=tuple(nic_ids),
        )

    def _out(self, ctx: ActionContext, action: Drain | None) -> tuple[bool, str]:
        kinds = self._kinds(ctx)
        nic_ids, nics, planned = self._planned(ctx)
        if not planned:
            for nic_id, nic in nics.items():  # the cache of the NICs' records (approval reads it)
                self._settle(ctx, nic_id, tags_work=False, nic=nic)
            if action is not None:
                ctx.log.warning("vm is in no backend pool: nothing to take out", nics=nic_ids)
            return False, "in no backend pool"
        leaving = self._leaving(ctx, nic_ids, nics, planned)
        floor.admit(self.network, ctx, action, leaving, "pool")
        summary = summary_text(_why(ctx), ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ"), ctx.vm.name)
        taken = each_nic(
            ctx, list(nics.items()), lambda c, n, _: self._drain_nic(c, n[0], n[1], kinds, summary)
        )
        forced = floor.forced_reason(action) if action is not None else ctx.forced
        floor.after_drain(self.network, ctx, leaving.pools, forced)
        done = [t for t in taken if t]
        return (True, "; ".join(done)) if done else (False, "already out of every pool")

    @staticmethod
    def _already_out(ctx: ActionContext, nics: dict[str, NetworkInterface], planned: list[Ref]) -> set[str]:
        """The pools drainer's records say this VM has left: on the NICs, or kept locally (a local
        copy of an interrupted write counts only once the NIC no longer has the reference)."""
        still = {r.pool_id.lower() for r in planned}
        out = {
            r.pool_id
            for n in nics.values()
            for r in decode(trusted_view(ctx, n).tags, subscription_of(str(n.id))).refs
        }
        for entry in ctx.ledger.entries("nic"):
            if entry.status in ("removed", CACHED) or (
                entry.status == "removing" and entry.target.lower() not in still
            ):
                out.add(entry.target)
        return out

    def _settle(
        self, ctx: ActionContext, nic_id: str, *, tags_work: bool, nic: NetworkInterface | None = None
    ) -> None:
        """Settle the local copies of earlier, interrupted or ambiguous writes against the NIC, and
        refresh the cache of the NIC's record (approval reads it, and it is gone with a lost state).

        A copy whose reference the NIC still has: that write never happened (forgotten). A copy the
        NIC's record holds: cached. Otherwise the write happened without its tags (a policy that
        strips them), unless this run showed that the NIC keeps drainer's tags: then the write never
        happened either, and the reference was removed by someone else (forgotten: never re-added)."""
        view = trusted_view(ctx, nic if nic is not None else read_nic(self.network, nic_id))
        recorded = decode(view.tags, subscription_of(nic_id)).refs
        on_nic = {r.key for r in recorded}
        present = {r.key for r in view.refs}
        mine = [e for e in ctx.ledger.entries("nic") if same(e.resource_id, nic_id)]
        known = {_ref(e).key for e in mine}
        _compare(ctx, nic_id, recorded, mine, present)
        # Only records drainer verified are copied: the ledger is drainer's own word.
        ctx.ledger.record([_entry(nic_id, r, CACHED) for r in recorded if r.key not in known])
        settled: list[LedgerEntry] = []
        gone: list[LedgerEntry] = []
        for entry in (e for e in mine if e.status == "removing"):
            key = _ref(entry).key
            if key in on_nic:
                settled.append(entry._replace(status=CACHED))
            elif key in present or tags_work:
                gone.append(entry)
            else:
                settled.append(entry._replace(status="removed"))
        ctx.ledger.forget(gone)
        ctx.ledger.record(settled)

    def _local(self, ctx: ActionContext, nic_id: str) -> list[LedgerEntry]:
        return [e for e in ctx.ledger.entries("nic") if same(e.resource_id, nic_id) and e.status in LOCAL]

    def _drain_nic(
        self, ctx: ActionContext, nic_id: str, first: NetworkInterface, kinds: tuple[str, ...], summary: str
    ) -> str:
        rid = ResourceId.parse(nic_id)
        # A NIC whose record is already local (its tags were refused before) stays local.
        local = any(e.status == "removed" for e in self._local(ctx, nic_id))
        reads = [first]
        tags_work: list[bool] = []  # whether this run's write kept drainer's tags on the NIC
        unsigned: list[bool] = []  # the record could not be signed (said so already)

        def read() -> NetworkInterface:
            return reads.pop() if reads else read_nic(self.network, nic_id)

        def plan(nic: NetworkInterface) -> tuple[NetworkInterface, Plan] | None:
            # Planned from what verifies only: a forged record is never signed along with ours.
            change = plan_drain(trusted_view(ctx, nic), kinds, summary)
            if not change.removed:
                return None
            if not local and change.on_nic:
                try:
                    change = change._replace(tags=ctx.records.seal(nic_id, change.tags))
                except RecordKeyError as exc:
                    ctx.records.unsigned(nic_id, exc)
                    unsigned.append(True)
                    change = change._replace(on_nic=False)
            if local or not change.on_nic:
                change = change._replace(tags=dict(nic.tags or {}), on_nic=False)
            return nic, change

        def write(_: NetworkInterface, change: tuple[NetworkInterface, Plan]) -> None:
            nic, p = change
            # A local copy before the write: the only record if the NIC turns out not to keep its
            # tags (an Azure Policy that rewrites them is only seen in the answer).
            entries = [_entry(nic_id, r, "removing") for r in p.removed]
            ctx.ledger.record(entries)
            ctx.checkpoint("nic-recorded")
            apply(nic, p)
            try:
                written = self.network.put_nic(rid.resource_group, rid.name, nic)
            except ArmError as exc:
                # A refusal surely did not apply. A 412 may follow an applied write the SDK retried
                # (500, then the same If-Match): the copy stays, and is settled after the drain.
                if refused(exc) and exc.status != 412:
                    ctx.ledger.forget(entries)
                raise
            ctx.checkpoint("nic-written")
            kept = {k.lower(): v for k, v in (written.tags or {}).items()}
            tags_work.append(
                p.on_nic and all(kept.get(k.lower()) == v for k, v in p.tags.items() if is_ours(k))
            )
            if p.on_nic and any(kept.get(k.lower()) != v for k, v in p.tags.items() if is_ours(k)):
                ctx.log.warning(
                    "an Azure Policy rewrote drainer's record on the NIC: keeping it locally instead",
                    nic=rid.name,
                )
                ctx.ledger.record([_entry(nic_id, r, "removed") for r in p.removed])
            elif not p.on_nic:
                if not local and not unsigned:
                    ctx.log.warning(
                        "the NIC's tags cannot hold drainer's record (Azure's limit of 50 tags): "
                        "keeping it locally",
                        nic=rid.name,
                    )
                ctx.ledger.record([_entry(nic_id, r, "removed") for r in p.removed])
            else:
                ctx.ledger.record([_entry(nic_id, r, CACHED) for r in p.removed])

        try:
            written = read_modify_write(f"NIC {rid.name}", read, plan, write, ctx)
        except ArmError as exc:
            if local or not by_policy(exc):
                raise
            ctx.log.warning(
                "an Azure Policy refuses drainer's tags on the NIC: keeping its record locally",
                nic=rid.name,
                error=str(exc),
            )
            local = True
            written = read_modify_write(f"NIC {rid.name}", read, plan, write, ctx)
        self._settle(ctx, nic_id, tags_work=bool(tags_work) and all(tags_work))
        if written is None:
            return ""
        pools = sorted({_short(r.pool_id) for r in written[1].removed})
        ctx.log.info(
            "removed NIC from pools",
            nic=rid.name,
            pools=pools,
            record="nic" if written[1].on_nic else "local",
        )
        return f"{rid.name} out of {', '.join(pools)}"

    # -- back into rotation ------------------------------------------------------------------

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        self.network.start()
        self._in(ctx)

    def _in(self, ctx: ActionContext) -> tuple[bool, str]:
        nic_ids = {n.lower(): n for n in discover_nics(self.network, ctx)}
        for entry in ctx.ledger.entries("nic"):
            if entry.resource_id.lower() in nic_ids:
                continue
            owner = self._owner(entry.resource_id)
            if owner and not same(owner, ctx.vm.resource_id):
                # The NIC moved to another VM: its pools are that VM's business now.
                ctx.log.warning(
                    "a NIC drainer took out is now attached to another VM: left to it",
                    nic=entry.resource_id.rsplit("/", 1)[-1],
                    vm=owner.rsplit("/", 1)[-1],
                )
                ctx.ledger.forget(
                    [e for e in ctx.ledger.entries("nic") if same(e.resource_id, entry.resource_id)]
                )
                continue
            nic_ids.setdefault(entry.resource_id.lower(), entry.resource_id)
        presence = Presence(self.network, ctx)
        summary = summary_text(
            "restore waits for a pool that answered 404",
            ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            ctx.vm.name,
        )
        done: list[str] = []
        pending: list[str] = []
        for back, waiting in each_nic(
            ctx, sorted(nic_ids.values()), lambda c, n, g: self._restore_nic(c, n, g[0], summary), (presence,)
        ):
            done.extend(back)
            pending.extend(waiting)
        if not pending:
            ctx.absence.clear()  # a 404 counted now never counts towards a later maintenance
        if pending:
            raise ActionError(
                "restore",
                f"incomplete: {', '.join(pending)} answered 404; retried until confirmed gone "
                f"({ctx.config.drain.gone_after_reads} reads over {ctx.config.drain.gone_after_seconds}s)",
            )
        return (True, "; ".join(done)) if done else (False, "nothing to restore")

    def _owner(self, nic_id: str) -> str:
        """The VM a NIC is attached to now ("" when none, or when it cannot be read)."""
        try:
            nic = read_nic(self.network, nic_id)
        except ArmError:
            return ""
        return (
            str(nic.virtual_machine.id) if nic.virtual_machine is not None and nic.virtual_machine.id else ""
        )

    def _restore_nic(
        self, ctx: ActionContext, nic_id: str, presence: Presence, summary: str
    ) -> tuple[list[str], list[str]]:
        rid = ResourceId.parse(nic_id)
        local = self._local(ctx, nic_id)
        cached = [e for e in ctx.ledger.entries("nic") if same(e.resource_id, nic_id) and e.status == CACHED]
        stale: list[LedgerEntry] = []

        def read() -> NetworkInterface | None:
            try:
                nic = read_nic(self.network, nic_id)
            except ArmError as exc:
                if exc.status != 404:
                    raise
                return None
            ctx.absence.present(nic_id)
            return nic

        computed: list[Plan] = []

        def plan(nic: NetworkInterface | None) -> Plan | None:
            if nic is None:
                return None
            view = trusted_view(ctx, nic)
            # An unconfirmed copy ("removing") counts only if its write surely happened: none of the
            # references it took out is still on the NIC (else that write never applied).
            present = {r.key for r in view.refs}
            pending = [e for e in local if e.status == "removing"]
            stale[:] = pending if any(_ref(e).key in present for e in pending) else []
            # Either copy is enough: the NIC's verified record and every local copy of this drain.
            usable = [e for e in local if e not in stale] + cached
            _compare(ctx, nic_id, decode(view.tags, subscription_of(nic_id)).refs, local + cached, present)
            change = plan_restore(
                view, [_ref(e) for e in usable], lambda r: presence.pool(r.kind, r.pool_id), summary
            )
            change = change._replace(tags=ctx.records.seal(nic_id, change.tags))
            computed[:] = [change]
            return change if change.changes(view) else None

        def write(nic: NetworkInterface | None, change: Plan) -> None:
            if nic is None:  # plan() returns None for an absent NIC: never reached
                return
            apply(nic, change)
            self.network.put_nic(rid.resource_group, rid.name, nic)
            ctx.checkpoint("nic-restored")

        last: list[Any] = []

        def read_and_keep() -> NetworkInterface | None:
            nic = read()
            last[:] = [nic]
            return nic

        read_modify_write(f"NIC {rid.name}", read_and_keep, plan, write, ctx)
        nic = last[0] if last else None
        if nic is None:
            if ctx.absence.absent(nic_id, ctx.now()):
                ctx.log.warning("NIC confirmed gone: nothing to restore on it", nic=rid.name)
                metrics.current.inc("dropped", {"kind": "nic"})
                ctx.ledger.forget(local + cached)
                return [], []
            return [], [f"NIC {rid.name}"]
        written = computed[-1]
        for ref in written.dropped:
            ctx.log.warning(
                "backend pool confirmed gone: dropped from the restore", nic=rid.name, pool=ref.pool_id
            )
            metrics.current.inc("dropped", {"kind": ref.kind})
        keep = {r.key for r in written.kept}
        ctx.ledger.forget([e for e in local + cached if _ref(e).key not in keep])
        if written.restored:
            ctx.log.info(
                "returned NIC to pools", nic=rid.name, pools=sorted(r.pool_id for r in written.restored)
            )
        leftover = decode(written.tags, "").unreadable
        if leftover:
            ctx.log.warning("unreadable drainer tags left on the NIC", nic=rid.name, tags=sorted(leftover))
        back = [f"{rid.name} back in {len(written.restored)} pool(s)"] if written.restored else []
        return back, [_short(r.pool_id) for r in written.kept]
