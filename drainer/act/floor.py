"""The pools' floor, as the load-balancer drain methods apply it before taking this VM out: "announce,
then check" (the rules, and why they are safe, are in ``drainer.decide.intents``).

Before an early drain, ``admit``:

1. writes this VM's intent on its NICs (one NIC PUT each: the tag ``drainer-intent``) and checks the
   answer kept it (an Azure Policy on tags may strip it);
2. reads its pools (one GET per load balancer or application gateway) and then every other member's
   NIC (one GET each): in the pool or not, its intent, drainer's record; with ``max_unavailable``,
   also the NICs of the members' resource groups that drainer's records or intents show out of the
   pools (one list per resource group, then a GET each);
3. grants the drain (the intent stays on the NICs until the VM is back), or withdraws the intent:
   held. When only other VMs' intents stand in the way (they decide now too), it retries after a
   random delay: up to a turn (the time its announcement and reads took) for each VM announcing
   now, at least ``max(spread_seconds, 0.5)`` seconds, doubled each time, within half the ARM
   deadline; past that, the next run tries again.

Nothing else is needed: no resource the operator creates, no conditional write (the REST spec
declares no ``If-Match`` for a NIC PUT: each VM writes only its own NICs), no clock shared between
VMs. An intent counts at most ``[fleet] claim_seconds`` from when a VM first saw it (remembered in
the state database), and a VM acts on its grant only within a third of that.

A drain the platform forces (the event Started, NotBefore within ``[policy] force_before_seconds``,
Preempt or Terminate) announces too, so others count it, and goes ahead whatever the floor says.
After every drain ``after_drain`` reads the pools again: a pool below its floor, for any reason, is a
warning, ``drainer_floor_breaches_total`` and a line in ``status``. ``release`` removes the intent
once the VM is back (sent at every restore: idempotent).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from azure.mgmt.network.models import NetworkInterface

from drainer.act.actuator import ActionContext, Admission
from drainer.act.lb_common import ResourceId, nic_of, read_modify_write, read_nic, same, vnet_of
from drainer.base import metrics
from drainer.base.errors import ActionError, DrainHeldError
from drainer.decide import intents
from drainer.decide.core import Drain
from drainer.decide.intents import Intent, Member, PoolView
from drainer.decide.nicrecord import decode as decode_records
from drainer.decide.nicrecord import subscription_of
from drainer.io.arm import ArmError, Network

ATTEMPTS = 4  # announcements per drain when other VMs decide at the same moment
READ_THREADS = 8  # the peers' NICs read at once
MIN_BACKOFF = 0.5  # seconds: a random delay after a conflict is up to max(spread, this) at least


class Leaving(NamedTuple):
    """What this VM is about to take out, for the floor."""

    nics: tuple[str, ...]  # its NICs that carry the intent (ids)
    own: frozenset[str]  # all its NIC ids, lower case (never counted as peers)
    pools: tuple[str, ...]  # the pools it leaves, and those drainer's records say it already left
    addresses: frozenset[tuple[str, str]] = frozenset()  # (private IP, virtual network) for IP pools
    discovered: tuple[str, ...] = ()  # the VM's NIC ids as found now (the grant hands them on)


def forced_reason(action: Drain) -> str:
    """Why the platform forces this drain ("" when it does not)."""
    if action.forced:
        return action.forced
    urgent = sorted({"Preempt", "Terminate"} & set(action.event_types))
    return f"{'/'.join(urgent)}: the VM goes away anyway" if urgent else ""


def floors_of(ctx: ActionContext, pools: Sequence[str]) -> dict[str, int]:
    return {p: intents.floor_for(p, ctx.config.drain.min_in_service) for p in pools}


def applies(ctx: ActionContext) -> bool:
    """Whether any floor is configured (else a drain method need not even ask)."""
    return intents.any_floor(ctx.config.drain.min_in_service, ctx.config.drain.max_unavailable)


def admit(network: Network, ctx: ActionContext, action: Drain | None, leaving: Leaving, what: str) -> None:
    """Take this VM's decision to leave ``leaving.pools`` through the protocol, or hold the drain.
    ``action`` None: a reconcile taking a VM decided out back out of pools it was put in again
    (forced only when the core said so: ``ctx.forced``). A grant made for this action already (the
    drain method's ``admit`` before the pre-drain hooks) is used while it is fresh.

    Raises DrainHeldError when the floor or ``max_unavailable`` holds the drain; ActionError when the
    floor cannot be checked (an intent that cannot be written or kept, pools that cannot be read:
    nothing is taken out, and the next run tries again), unless the platform forces the drain."""
    cfg = ctx.config
    forced = forced_reason(action) if action is not None else ctx.forced
    wanted = frozenset(p.lower() for p in leaving.pools)
    floors = floors_of(ctx, leaving.pools)
    if _granted(ctx, wanted) or not applies(ctx):
        return
    if not forced:
        _short_already(network, ctx, leaving, floors, what)
    begun = time.monotonic()
    for attempt in range(ATTEMPTS):
        started = time.monotonic()
        try:
            _announce(network, ctx, leaving, forced)
            ctx.checkpoint("intent-announced")
            verdict = intents.admit(_views(network, ctx, leaving, floors), cfg.drain.max_unavailable)
        except (ActionError, ValueError) as exc:
            # Nothing was taken out: the drain fails with Azure's own words, and is retried.
            _withdraw(network, ctx, leaving)
            if not forced:
                if isinstance(exc, ActionError):
                    raise
                raise ActionError("announce", str(exc)) from exc
            ctx.log.error("could not check the pools' floor; the platform forces the drain", error=_text(exc))
            return
        if verdict.ok or forced:
            ctx.admitted.append(
                Admission(wanted, started, lambda: _withdraw(network, ctx, leaving), leaving.discovered)
            )
            if not verdict.ok:
                ctx.log.warning(
                    "draining below the pool's floor: the platform forces it",
                    forced_by=forced,
                    pools=verdict.reason,
                )
            else:
                ctx.log.info("the pools keep their floor: drain granted", pools=_counts(verdict.counts))
            return
        _withdraw(network, ctx, leaving)
        delay = _backoff(ctx, attempt, time.monotonic() - started, verdict, begun)
        if verdict.conflict and attempt + 1 < ATTEMPTS and delay:
            ctx.log.info(
                "other VMs are leaving the same pools now: withdrawn, retrying after a random delay",
                pools=verdict.reason,
                up_to_seconds=round(delay, 1),
            )
            ctx.spread(delay)
            continue
        raise DrainHeldError(what, f"held: {verdict.reason}")


def _backoff(ctx: ActionContext, attempt: int, took: float, verdict: intents.Verdict, begun: float) -> float:
    """How long (at most: the delay is drawn at random) to wait before announcing again after a
    conflict: long enough to give each of the VMs announcing now a turn of the length this attempt
    took, doubled at each attempt; 0 when it would not fit in half of the ARM deadline (the action's
    calls share it): held, the next run tries again."""
    contenders = 1 + max((c.leaving for c in verdict.counts), default=0)
    window = max(ctx.config.fleet.spread_seconds, MIN_BACKOFF, contenders * took) * 2**attempt
    left = ctx.config.azure.deadline / 2 - (time.monotonic() - begun) - took
    return min(window, left) if left >= MIN_BACKOFF else 0.0


def _short_already(
    network: Network, ctx: ActionContext, leaving: Leaving, floors: Mapping[str, int], what: str
) -> None:
    """Hold without a write when the pools alone, as their load balancers list them, already lack
    the floor (most VMs of a pool at its floor never announce). Raises DrainHeldError, ArmError."""
    pools = _read_pools(network, leaving.pools, leaving)
    views = [
        PoolView(
            p.pool_id,
            floors[p.pool_id],
            tuple(Member(n, serving=True, leaving=False) for n in p.nics)
            + tuple(Member(f"ip:{ip}", serving=up, leaving=False) for ip, _, up in p.addresses),
        )
        for p in pools
    ]
    verdict = intents.admit(views, 0)
    if not verdict.ok:
        raise DrainHeldError(what, f"held: {verdict.reason}")


def _granted(ctx: ActionContext, wanted: frozenset[str]) -> bool:
    """A grant of this action that covers these pools and may still be acted on."""
    return any(wanted <= a.pools for a in granted(ctx))


def granted(ctx: ActionContext) -> list[Admission]:
    """The grants of this action that may still be acted on (a third of ``claim_seconds``)."""
    limit = intents.act_within(ctx.config.fleet.claim_seconds)
    return [a for a in ctx.admitted if time.monotonic() - a.at < limit]


def _text(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, ActionError) else str(exc)


def _counts(counts: Sequence[intents.PoolCount]) -> list[str]:
    return [
        f"{intents.short_name(c.pool_id)}: {c.serving} stay in service (min_in_service={c.floor})"
        for c in counts
    ]


# -- announce, withdraw, release -------------------------------------------------------------------


def _announce(network: Network, ctx: ActionContext, leaving: Leaving, forced: str) -> None:
    """Write a fresh intent on each of this VM's NICs; done once every write has completed.
    Raises ValueError (it does not fit a tag), ActionError (the write failed, or an Azure Policy
    stripped the tag)."""
    value = intents.encode(
        Intent(
            nonce=secrets.token_hex(4),
            expires=int(ctx.now().timestamp() + ctx.config.fleet.claim_seconds),
            pools=frozenset(intents.key(p) for p in leaving.pools),
            forced=bool(forced),
        )
    )
    for nic_id in leaving.nics:
        _set_intent(network, ctx, nic_id, value)


def _set_intent(network: Network, ctx: ActionContext, nic_id: str, value: str | None) -> None:
    """The NIC's intent set to ``value`` (None: removed), by read-modify-write. Raises ActionError."""
    rid = ResourceId.parse(nic_id)

    def plan(nic: NetworkInterface) -> dict[str, str] | None:
        current = intents.intent_of(nic.tags)
        if value is None and current is None:
            return None
        return intents.with_intent(nic.tags, value)

    def write(nic: NetworkInterface, tags: dict[str, str]) -> None:
        nic.tags = tags or None
        written = network.put_nic(rid.resource_group, rid.name, nic)
        kept = intents.intent_of(written.tags)
        if value is not None and (kept is None or kept[0] != value):
            raise ActionError(
                "announce", f"NIC {rid.name} does not keep drainer's intent tag (an Azure Policy on tags?)"
            )

    read_modify_write(f"NIC {rid.name}", lambda: read_nic(network, nic_id), plan, write, ctx)


def _withdraw(network: Network, ctx: ActionContext, leaving: Leaving) -> None:
    """Remove the intent (best effort: if it stays, it stops counting ``claim_seconds`` after each
    peer first saw it). Logs failures."""
    try:
        for nic_id in leaving.nics:
            _set_intent(network, ctx, nic_id, None)
    except ActionError as exc:
        ctx.log.warning("could not withdraw this VM's intent; it expires by itself", error=exc.reason)


def release(network: Network, ctx: ActionContext, nic_ids: Sequence[str]) -> None:
    """Once back in rotation: remove this VM's intent from its NICs, whatever else the restore did
    (idempotent: a NIC without one is only read). Logs failures."""
    try:
        for nic_id in nic_ids:
            _set_intent(network, ctx, nic_id, None)
    except ActionError as exc:
        ctx.log.warning(
            "could not release this VM's intent; it expires by itself",
            error=exc.reason,
            claim_seconds=ctx.config.fleet.claim_seconds,
        )


# -- reading the pools after the announcement ------------------------------------------------------


class _Pool(NamedTuple):
    pool_id: str
    nics: tuple[str, ...]  # NIC-based: the other members' NIC ids (lower case)
    addresses: tuple[tuple[str, str, bool], ...]  # IP-based: (ip, virtual network, serving)


def _read_pools(network: Network, pools: Sequence[str], leaving: Leaving) -> list[_Pool]:
    """Each pool's other members (one GET per load balancer or application gateway). A pool that
    is gone has none. Raises ArmError."""
    parents: dict[str, Any] = {}
    found: list[_Pool] = []
    for pool_id in pools:
        cut = pool_id.lower().find("/backendaddresspools/")
        parent_id = pool_id[:cut] if cut >= 0 else pool_id
        if parent_id.lower() not in parents:
            rid = ResourceId.parse(parent_id)
            gateway = "/applicationgateways/" in parent_id.lower()
            read = network.get_app_gateway if gateway else network.get_load_balancer
            try:
                parents[parent_id.lower()] = read(rid.resource_group, rid.name)
            except ArmError as exc:
                if exc.status != 404:
                    raise
                parents[parent_id.lower()] = None
        parent = parents[parent_id.lower()]
        pool = (
            next((p for p in (parent.backend_address_pools or []) if same(p.id, pool_id)), None)
            if parent
            else None
        )
        if pool is None:
            found.append(_Pool(pool_id, (), ()))
            continue
        nics = sorted(
            {nic_of(str(c.id)).lower() for c in pool.backend_ip_configurations or [] if c.id} - leaving.own
        )
        addresses = []
        for address in getattr(pool, "load_balancer_backend_addresses", None) or []:
            if address.ip_address is None or getattr(address, "network_interface_ip_configuration", None):
                # A NIC-based pool's member as Azure also lists it here (its ipConfiguration, no
                # address of its own): counted once, by its NIC, above.
                continue
            network_id = _network_of(address)
            if (str(address.ip_address), network_id) in leaving.addresses:
                continue
            state = address.admin_state
            state = str(getattr(state, "value", state) or "None")
            addresses.append((str(address.ip_address), network_id, state != "Down"))
        found.append(_Pool(pool_id, tuple(nics), tuple(addresses)))
    return found


def _network_of(address: Any) -> str:
    if address.virtual_network is not None and address.virtual_network.id:
        return str(address.virtual_network.id).lower()
    if address.subnet is not None and address.subnet.id:
        return vnet_of(str(address.subnet.id))
    return ""


def _refs(nic: NetworkInterface) -> set[str]:
    return {
        str(ref.id).lower()
        for config in nic.ip_configurations or []
        for ref in [
            *(config.load_balancer_backend_address_pools or []),
            *(config.application_gateway_backend_address_pools or []),
        ]
        if ref.id
    }


def _recorded(nic: NetworkInterface) -> set[str]:
    """The pools drainer's record on this NIC says were taken out (references and admin states)."""
    records = decode_records(dict(nic.tags or {}), subscription_of(str(nic.id)))
    return {r.pool_id.lower() for r in records.refs} | {a.pool_id.lower() for a in records.admin}


def _addresses(nic: NetworkInterface) -> set[tuple[str, str]]:
    return {
        (str(c.private_ip_address), vnet_of(str(c.subnet.id)))
        for c in nic.ip_configurations or []
        if c.private_ip_address and c.subnet is not None and c.subnet.id
    }


def _read_nics(network: Network, nic_ids: Sequence[str]) -> dict[str, NetworkInterface]:
    """The NICs, read at once (a few threads: the reads are the protocol's window, and ARM's answers
    take their time); a NIC that is gone is left out. Raises ArmError."""

    def read(nic_id: str) -> NetworkInterface | None:
        try:
            return read_nic(network, nic_id)
        except ArmError as exc:
            if exc.status != 404:
                raise
            return None

    if len(nic_ids) <= 1:
        found = [read(n) for n in nic_ids]
    else:
        with ThreadPoolExecutor(
            max_workers=min(len(nic_ids), READ_THREADS), thread_name_prefix="peer"
        ) as pool:
            found = list(pool.map(read, nic_ids))
    return {n: nic for n, nic in zip(nic_ids, found, strict=True) if nic is not None}


def _views(
    network: Network, ctx: ActionContext, leaving: Leaving, floors: Mapping[str, int]
) -> list[PoolView]:
    """What the floor is decided from, read after this VM's announcement. The peers' NICs are read
    in a random order, a few at once, and (without ``max_unavailable``) only until every pool has
    its floor of members seen in service and not leaving: a member not read is not counted, which
    is safe (``drainer.decide.intents``), and a pool of hundreds costs a few reads. Raises ArmError."""
    pools = _read_pools(network, leaving.pools, leaving)
    wanted = {p.lower() for p in leaving.pools}
    candidates = {n for p in pools for n in p.nics}
    listed: list[NetworkInterface] = []
    full = bool(ctx.config.drain.max_unavailable)
    if full or any(p.addresses for p in pools):
        # NICs out of the pools (drainer's record, or an intent) are in no member list; the NICs of
        # IP-based members are found by address. The listing only names NICs: each is read again.
        groups = {ctx.vm.resource_group.lower()} | {
            ResourceId.parse(n).resource_group.lower() for n in candidates
        }
        for group in sorted(groups):
            listed.extend(network.list_nics(group))
    by_address: dict[tuple[str, str], str] = {}
    for nic in listed:
        nic_id = str(nic.id).lower()
        if not nic.id or nic_id in leaving.own:
            continue
        for address in _addresses(nic):
            by_address[address] = nic_id
        relevant = (_refs(nic) | _recorded(nic)) & wanted or intents.intent_of(nic.tags) is not None
        if full and relevant:
            candidates.add(nic_id)
    for pool in pools:
        candidates |= {by_address[(ip, vnet)] for ip, vnet, _ in pool.addresses if (ip, vnet) in by_address}
    order = sorted(candidates)
    secrets.SystemRandom().shuffle(order)  # VMs deciding together do not all read the same peers first
    known = ctx.seen.load()
    nics: dict[str, NetworkInterface] = {}
    read: set[str] = set()
    views: list[PoolView] = []
    seen: dict[str, float] = dict(known)
    for start in range(0, max(len(order), 1), READ_THREADS):
        batch = order[start : start + READ_THREADS]
        nics.update(_read_nics(network, batch))
        read.update(batch)
        now = ctx.now().timestamp()
        observed = {n: (f[0] if (f := intents.intent_of(nic.tags)) else None) for n, nic in nics.items()}
        seen = intents.remember(known, observed, now)
        views = _build(ctx, pools, floors, nics, read, by_address, seen, now)
        if not full and intents.admit(views, 0).ok:
            break
    ctx.seen.save(seen)
    return views


def _build(  # noqa: PLR0917 - the reads of one attempt
    ctx: ActionContext,
    pools: Sequence[_Pool],
    floors: Mapping[str, int],
    nics: Mapping[str, NetworkInterface],
    read: set[str],
    by_address: Mapping[tuple[str, str], str],
    seen: Mapping[str, float],
    now: float,
) -> list[PoolView]:
    """The pools as read so far: members whose NIC was not read yet are not counted."""
    claim = ctx.config.fleet.claim_seconds

    def leaving_from(nic: NetworkInterface | None, pool_id: str) -> bool:
        found = intents.intent_of(nic.tags) if nic is not None else None
        if nic is None or found is None:
            return False
        value, intent = found
        first = seen.get(intents.seen_key(str(nic.id), value), now)
        return intents.key(pool_id) in intent.pools and intents.live(intent, first, now, claim)

    def vm_of(nic: NetworkInterface | None, fallback: str) -> str:
        if nic is not None and nic.virtual_machine is not None and nic.virtual_machine.id:
            return str(nic.virtual_machine.id).lower()
        return fallback

    views: list[PoolView] = []
    for pool in pools:
        key = pool.pool_id.lower()
        members: list[Member] = []
        named = set(pool.nics)
        for nic_id, nic in nics.items() if not pool.addresses else ():  # NIC-based pools
            if (
                nic_id not in named
                and not (_refs(nic) | _recorded(nic)) & {key}
                and not leaving_from(nic, key)
            ):
                continue
            serving = key in _refs(nic)
            members.append(
                Member(
                    vm_of(nic, nic_id),
                    serving=serving,
                    leaving=leaving_from(nic, key),
                    out_by_drainer=not serving and key in _recorded(nic),
                )
            )
        for ip, vnet, serving in pool.addresses:
            nic_id = by_address.get((ip, vnet), "")
            if nic_id and nic_id not in read:
                continue  # its intent is not known yet
            owner = nics.get(nic_id)
            members.append(
                Member(
                    vm_of(owner, f"ip:{ip}"),
                    serving=serving,
                    leaving=leaving_from(owner, key),
                    out_by_drainer=not serving and owner is not None and key in _recorded(owner),
                )
            )
        views.append(PoolView(pool.pool_id, floors[pool.pool_id], tuple(members)))
    return views


# -- after the drain -------------------------------------------------------------------------------


def after_drain(network: Network, ctx: ActionContext, pools: Sequence[str], forced: str) -> None:
    """Read the pools again once this VM is out: a pool below its floor, whoever took it there, is
    a warning, ``drainer_floor_breaches_total`` and a line in ``status``. Logs a failed read."""
    floors = floors_of(ctx, pools)
    if not any(floors.values()):
        return
    try:
        found = _read_pools(network, pools, Leaving((), frozenset(), tuple(pools)))
    except ArmError as exc:
        ctx.log.warning("could not read the pools again after the drain", error=exc.reason)
        return
    serving = {p.pool_id: len(p.nics) + sum(1 for *_, up in p.addresses if up) for p in found}
    below = intents.below_floor(serving, floors)
    if not below:
        return
    why = f" (forced: {forced})" if forced else ""
    ctx.log.warning("a pool is below its floor after this drain", pools=below, forced_by=forced or None)
    metrics.current.inc("floor_breaches", {})
    ctx.notes.append(f"below the floor after this drain{why}: {'; '.join(below)}")
