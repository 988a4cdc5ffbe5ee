"""The pool's floor, as the load-balancer drain methods apply it before taking this VM out.

Without a lease (``[fleet] lease`` empty) the floor is checked against the pools as read now: two VMs
deciding in the same second can both pass it. With a lease, every early drain first writes a claim
into the lease's tags with ``If-Match`` (``drainer.decide.claims`` has the rule): of two VMs deciding at
once, the second one's write fails (412), it reads again, sees the first one's claim and holds.

A drain the platform forces (the event Started, NotBefore within ``[policy] force_before_seconds``,
Preempt or Terminate) goes ahead whatever the floor says; when that takes a pool below it, one
warning, ``drainer_floor_breaches_total`` and a line in ``status`` say so. Its claim is still
written (marked forced), so the other VMs count it.
"""

from __future__ import annotations

from azure.mgmt.network.models import ApplicationSecurityGroup

from drainer.act.actuator import ActionContext
from drainer.act.lb_common import ResourceId, read_modify_write
from drainer.base import metrics
from drainer.base.errors import ActionError, DrainHeldError
from drainer.decide.claims import PREFIX, Claim, admit, decode, key, with_claim, without_claim
from drainer.decide.core import Drain
from drainer.io.arm import Network

MAX_TAGS = 50  # per resource (Azure's limit): a lease holds at most this many claims at once


def forced_reason(action: Drain) -> str:
    """Why the platform forces this drain ("" when it does not)."""
    if action.forced:
        return action.forced
    urgent = sorted({"Preempt", "Terminate"} & set(action.event_types))
    return f"{'/'.join(urgent)}: the VM goes away anyway" if urgent else ""


def hold_floor(  # noqa: PLR0917 - the drain methods' one call
    network: Network,
    ctx: ActionContext,
    action: Drain | None,
    pools: dict[str, set[str]],
    mine: set[str],
    what: str,
    *,
    already_out: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Take a slot before this VM leaves ``pools`` (pool id -> the ids of the other members in
    service), or hold the drain. ``mine``: this VM's member ids (NIC ids, ``ip:<address>``);
    ``already_out``: the pools drainer's records say it already left (the claim keeps covering them:
    a retry after a crash between two NIC writes plans only what is left). ``action`` None: a
    reconcile taking a VM decided out back out of pools it was put in again (forced only when the
    core said so: ``ctx.forced``).

    Raises DrainHeldError when there is no slot (or the lease cannot be used), ActionError when the
    claim does not fit a tag.
    """
    cfg = ctx.config
    forced = forced_reason(action) if action is not None else ctx.forced
    minimum = cfg.drain.min_in_service
    alone = admit(ctx.vm.name, pools, [], ctx.now().timestamp(), min_in_service=minimum, max_unavailable=0)
    if not cfg.fleet.lease:
        if not alone.ok and not forced:
            raise DrainHeldError(what, f"held: {alone.reason} (min_in_service={minimum})")
        if not alone.ok:
            _breach(ctx, forced, alone.reason)
        return
    lease = ResourceId.parse(cfg.fleet.lease)
    me = ctx.vm.name.lower()
    found: list[str] = []
    held: list[str] = []

    def read() -> ApplicationSecurityGroup:
        return network.get_asg(lease.resource_group, lease.name)

    def plan(asg: ApplicationSecurityGroup) -> dict[str, str] | None:
        now = ctx.now().timestamp()
        claims, _ = decode(asg.tags)
        verdict = admit(
            me,
            pools,
            claims,
            now,
            min_in_service=minimum,
            max_unavailable=cfg.drain.max_unavailable,
        )
        found[:] = [verdict.reason] if not verdict.ok else []
        own = next((c for c in claims if c.vm == me and c.expires > now), None)
        out_keys = frozenset(key(p) for p in already_out)
        if not verdict.ok and not forced:
            held[:] = [f"held: no slot: {verdict.reason}"]
            if own is None or own.pools <= out_keys:
                raise DrainHeldError(what, held[0])
            # A claim of an interrupted earlier try covers pools this VM is still in: it keeps only
            # what the VM has out (nothing: the claim goes), so it blocks no one for nothing.
            if not out_keys:
                return without_claim(asg.tags, me, now)
            return with_claim(asg.tags, own._replace(pools=out_keys), now)
        claim = Claim(
            vm=me,
            expires=int(now + cfg.fleet.claim_seconds),
            pools=frozenset(key(p) for p in pools) | out_keys | (own.pools if own else frozenset()),
            members=frozenset(key(m) for m in mine) | (own.members if own else frozenset()),
            forced=bool(found),
        )
        try:
            tags = with_claim(asg.tags, claim, now)
        except ValueError as exc:
            raise ActionError("claim a slot", str(exc)) from exc
        if len(tags) > MAX_TAGS and not forced:
            raise DrainHeldError(what, f"held: no slot: the lease holds {MAX_TAGS} tags, Azure's limit")
        return tags

    def write(asg: ApplicationSecurityGroup, tags: dict[str, str]) -> None:
        ctx.checkpoint("before-claim")
        _put(network, lease, asg, tags, None if held else me)

    try:
        read_modify_write("lease", read, plan, write, ctx)
    except DrainHeldError:
        raise
    except ActionError as exc:
        if not forced:
            raise DrainHeldError(what, f"held: the lease cannot be used: {exc}") from exc
        ctx.log.error("could not record this drain's claim in the lease; draining anyway", error=str(exc))
        # Unknown claims: at least the floor as this VM sees it alone is reported.
        found[:] = [] if alone.ok else [alone.reason]
    else:
        if held:
            raise DrainHeldError(what, held[0])
        ctx.log.info(
            "slot taken in the fleet's lease", lease=lease.name, pools=len(pools), forced=bool(found)
        )
    if found:
        _breach(ctx, forced, found[0])


def renew_claim(network: Network, ctx: ActionContext) -> None:
    """While the VM is out (every reconcile): move this VM's claim's expiry forward, or take it
    again if it lapsed (one failed renewal must not leave a VM that is out without its claim). A VM
    that dies out of rotation stops counting ``claim_seconds`` after its last renewal. Logs failures."""
    cfg = ctx.config
    if not cfg.fleet.lease:
        return
    lease = ResourceId.parse(cfg.fleet.lease)
    me = ctx.vm.name.lower()

    def plan(asg: ApplicationSecurityGroup) -> dict[str, str] | None:
        now = ctx.now().timestamp()
        mine = next((c for c in decode(asg.tags)[0] if c.vm == me), None)
        if mine is None:
            return None  # never claimed (no pool to leave): nothing to renew
        if mine.expires <= now:
            ctx.log.warning("this VM's claim had lapsed while it is out; taking it again")
        return with_claim(asg.tags, mine._replace(expires=int(now + cfg.fleet.claim_seconds)), now)

    try:
        read_modify_write(
            "lease",
            lambda: network.get_asg(lease.resource_group, lease.name),
            plan,
            lambda asg, tags: _put(network, lease, asg, tags, me),
            ctx,
        )
    except ActionError as exc:
        ctx.log.warning("could not renew this VM's claim in the lease", error=str(exc))


def release_claim(network: Network, ctx: ActionContext) -> None:
    """Once back in rotation: remove this VM's claim (if it fails, the claim expires). Logs failures."""
    cfg = ctx.config
    if not cfg.fleet.lease:
        return
    lease = ResourceId.parse(cfg.fleet.lease)
    me = ctx.vm.name.lower()
    try:
        done = read_modify_write(
            "lease",
            lambda: network.get_asg(lease.resource_group, lease.name),
            lambda asg: without_claim(asg.tags, me, ctx.now().timestamp()),
            lambda asg, tags: _put(network, lease, asg, tags, None),
            ctx,
        )
    except ActionError as exc:
        ctx.log.warning(
            "could not release this VM's claim; it expires by itself",
            error=str(exc),
            claim_seconds=cfg.fleet.claim_seconds,
        )
        return
    if done is not None:
        ctx.log.info("slot released in the fleet's lease", lease=lease.name)


def _put(
    network: Network,
    lease: ResourceId,
    asg: ApplicationSecurityGroup,
    tags: dict[str, str],
    claimant: str | None,
) -> None:
    """Write the lease's tags (the etag read stays on the object: If-Match). With ``claimant``, the
    answer must still carry its claim: an Azure Policy that strips tags would otherwise hand every
    VM a slot it never holds. Raises ArmError, ActionError."""
    asg.tags = tags
    written = network.put_asg(lease.resource_group, lease.name, asg)
    if claimant is not None and not any(k.lower() == PREFIX + claimant for k in (written.tags or {})):
        raise ActionError(
            "claim a slot", "the lease does not keep drainer's claims (an Azure Policy on tags?)"
        )


def _breach(ctx: ActionContext, forced: str, reason: str) -> None:
    ctx.log.warning("draining below the pool's floor: the platform forces it", forced_by=forced, pools=reason)
    metrics.current.inc("floor_breaches", {})
    ctx.notes.append(f"below the floor, forced ({forced}): {reason}")
