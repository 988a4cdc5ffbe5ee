"""The fleet's floor, decided from the pools themselves: pure rules ("announce, then check").

Every VM runs the same protocol before it takes itself out of its backend pools by its own choice
(an early drain; ``drainer.act.floor`` carries it out):

1. **announce**: write an *intent* on its own NICs (tag ``drainer-intent``; it writes its NICs anyway)
   and wait until that write has completed;
2. **read** its pools (the load balancers' member lists) and, for every other member, that member's
   NIC: whether it is still in the pool, its intent, drainer's record of what it took out;
3. **decide** (``admit``): leave only if every pool keeps its floor, counting as out every member that
   is out of the pool (whoever took it out: a dead VM, an operator, the platform) and every member
   whose live intent names the pool;
4. **act**: leave the pools (the intent stays on the NIC until the VM is back in), or **withdraw**
   the intent. When the pools alone would allow it and only other VMs' intents stand in the way
   (``Verdict.conflict``: they are deciding now too), every party withdraws and retries after a
   random delay: no clock decides who goes first.

Why it is safe. Take the VMs that are out by drainer's choice (or about to be: announced and
decided), each holding its intent from its announcement until it is back; let X be the one whose
announcement completed last. Every other one, Y, completed its announcement before X did, so before
X read Y's NIC: X saw Y's intent (or Y already out of the pool) and counted Y as out. The members X
counted in service are then none of these VMs: they are still in the pool, and X left the floor in
service among them. This needs only that a read that starts after a write has completed sees that
write (the resource provider contract: "Resource properties should reflect the update that is in
progress", https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md),
and that each VM writes only its own NICs: no conditional write (``If-Match``, which the REST spec
does not declare for a NIC PUT) and no clock takes part. ``tests/test_intents.py`` runs the
protocol through every interleaving of two and three VMs' steps.

Intents that cannot block forever: an intent counts at most ``claim_seconds`` from when *this* VM
first saw it (``first_seen``, remembered locally), whatever expiry it states: a VM that died after
announcing, or a forged tag, stops counting then. For that bound to keep the argument above, a VM
acts on its decision only within ``act_within`` (a third of ``claim_seconds``) of its announcement:
past that, it announces again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

TAG = "drainer-intent"  # outside nicrecord's "drainer:" namespace: its planners keep it untouched
VERSION = "1"
MAX_VALUE = 256  # Azure's limit on a tag value


def key(resource: str) -> str:
    """The short key of a pool id (the first 8 hex digits of the SHA-256 of its lower-cased id)."""
    return hashlib.sha256(resource.lower().encode()).hexdigest()[:8]


class Intent(NamedTuple):
    """ "This VM is taking itself out of these pools by its own choice" (or, ``forced``, because the
    platform forces it)."""

    nonce: str  # a fresh value per announcement: a retry is a new intent for every reader
    expires: int  # epoch seconds, as the writer's clock says (a reader keeps its own bound too)
    pools: frozenset[str]  # pool keys
    forced: bool = False


def encode(intent: Intent) -> str:
    """The tag value. Raises ValueError when it does not fit Azure's 256 characters."""
    value = ";".join(
        (
            VERSION,
            intent.nonce,
            str(intent.expires),
            "f" if intent.forced else "",
            ",".join(sorted(intent.pools)),
        )
    )
    if len(value) > MAX_VALUE:
        raise ValueError(f"an intent naming {len(intent.pools)} pools does not fit a tag")
    return value


def decode(value: str | None) -> Intent | None:
    """The intent in a tag value; None when there is none or it cannot be read (an unreadable intent
    is not honoured: only drainer writes them, and a reader must not be held by garbage)."""
    if not value:
        return None
    parts = value.split(";")
    if len(parts) != 5 or parts[0] != VERSION or not parts[1]:
        return None
    try:
        expires = int(parts[2])
    except ValueError:
        return None
    pools = frozenset(p for p in parts[4].split(",") if p)
    if expires < 0 or not pools:
        return None
    return Intent(parts[1], expires, pools, parts[3] == "f")


def intent_of(tags: Mapping[str, str] | None) -> tuple[str, Intent] | None:
    """(raw value, intent) of a NIC's tags (tag names are case-insensitive), or None."""
    for name, value in (tags or {}).items():
        if name.lower() == TAG:
            found = decode(str(value))
            return (str(value), found) if found is not None else None
    return None


def with_intent(tags: Mapping[str, str] | None, value: str | None) -> dict[str, str]:
    """A NIC's tags with the intent set to ``value`` (None: removed); every other tag untouched."""
    out = {k: v for k, v in (tags or {}).items() if k.lower() != TAG}
    if value is not None:
        out[TAG] = value
    return out


def act_within(claim_seconds: float) -> float:
    """How long after its announcement a VM may still act on its decision (then it announces again)."""
    return claim_seconds / 3


# -- what this VM remembers: when it first saw each intent ----------------------------------------


def seen_key(nic_id: str, value: str) -> str:
    return f"{nic_id.lower()}|{hashlib.sha256(value.encode()).hexdigest()[:16]}"


def remember(seen: Mapping[str, float], observed: Mapping[str, str | None], now: float) -> dict[str, float]:
    """``seen`` (seen key -> first seen, epoch seconds) after reading the NICs in ``observed`` (NIC id
    -> its intent's raw value, None for none): a value seen for the first time is remembered from
    ``now``; the entries of a NIC read now that no longer carries them are forgotten (its intent
    changed or went); NICs not read now keep theirs."""
    read = {n.lower() for n in observed}
    out = {k: v for k, v in seen.items() if k.split("|", 1)[0] not in read}
    for nic_id, value in observed.items():
        if value is None:
            continue
        k = seen_key(nic_id, value)
        out[k] = min(seen.get(k, now), now)  # a clock stepped back cannot push it later
    return out


def live(intent: Intent, first_seen: float, now: float, claim_seconds: float) -> bool:
    """Whether an intent still counts: until its stated expiry, and never longer than
    ``claim_seconds`` after this VM first saw it."""
    return now < min(float(intent.expires), first_seen + claim_seconds)


# -- the rule ------------------------------------------------------------------------------------


class Member(NamedTuple):
    """Another VM's member of a pool (a NIC, or an address of an IP-based pool), as read after this
    VM's announcement."""

    vm: str  # who (lower case): counts VMs for max_unavailable
    serving: bool  # in the pool (its NIC references the pool; its address is not Down)
    leaving: bool  # its live intent names the pool
    out_by_drainer: bool = False  # out of the pool, and drainer's record on its NIC names the pool


class PoolView(NamedTuple):
    pool_id: str
    floor: int  # min_in_service for this pool
    members: tuple[Member, ...]  # every other VM's member (this VM's own are left out)


class PoolCount(NamedTuple):
    pool_id: str
    serving: int  # other members that stay in service once this VM is out
    floor: int
    leaving: int  # other members in the pool whose intent names it
    away: int  # other VMs out of the pool by drainer's choice, or leaving it


class Verdict(NamedTuple):
    ok: bool
    # Held only because of other VMs' intents on members still in the pool (they are deciding now
    # too): withdraw and retry after a random delay. False when the pools alone hold the drain.
    conflict: bool
    reason: str  # why not ("" when ok)
    counts: tuple[PoolCount, ...]  # every pool, in the order given


def count(view: PoolView) -> PoolCount:
    serving = sum(1 for m in view.members if m.serving and not m.leaving)
    leaving = sum(1 for m in view.members if m.serving and m.leaving)
    away = len(
        {
            m.vm
            for m in view.members
            if (m.serving and m.leaving) or (not m.serving and (m.out_by_drainer or m.leaving))
        }
    )
    return PoolCount(view.pool_id, serving, view.floor, leaving, away)


def _short(c: PoolCount, max_unavailable: int) -> str:
    name = short_name(c.pool_id)
    if c.serving < c.floor:
        return f"{name}: {c.serving} other member(s) would stay in service, min_in_service={c.floor}" + (
            f" ({c.leaving} leaving now)" if c.leaving else ""
        )
    if max_unavailable and c.away >= max_unavailable:
        return f"{name}: {c.away} VM(s) out or leaving, max_unavailable={max_unavailable}"
    return ""


def admit(views: Sequence[PoolView], max_unavailable: int) -> Verdict:
    """Whether this VM may leave every pool of ``views`` now.

    A pool is short when fewer than its floor of the other members would stay in service (in the
    pool, with no live intent), or (``max_unavailable`` > 0) when that many other VMs are out of it
    by drainer's choice or leaving it. ``conflict``: every short pool would pass if the members
    still in it did not announce leaving."""
    counts = tuple(count(v) for v in views)
    reasons = [r for r in (_short(c, max_unavailable) for c in counts) if r]
    if not reasons:
        return Verdict(True, False, "", counts)
    calm = [
        count(v._replace(members=tuple(m._replace(leaving=False) if m.serving else m for m in v.members)))
        for v in views
    ]
    conflict = not any(_short(c, max_unavailable) for c in calm)
    return Verdict(False, conflict, "; ".join(reasons), counts)


def short_name(pool_id: str) -> str:
    """``<load balancer>/<pool>`` of a pool id (the id itself when it is not one)."""
    parts = pool_id.strip("/").split("/")
    return "/".join(parts[-3::2]) if len(parts) >= 3 else pool_id


def floor_for(pool_id: str, floors: Mapping[str, int]) -> int:
    """The floor of a pool (``[drain] min_in_service``): by the pool's id, then ``<load balancer>/<pool>``,
    then the pool's name, then ``"*"``; 1 when none of them is given."""
    parts = pool_id.strip("/").split("/")
    candidates: Iterable[str] = (pool_id, "/".join(parts[-3::2]), parts[-1], "*")
    lowered = {k.lower(): v for k, v in floors.items()}
    for candidate in candidates:
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
    return 1


def any_floor(floors: Mapping[str, int], max_unavailable: int) -> bool:
    """Whether the floor can hold any drain (else there is nothing to announce or read)."""
    return bool(max_unavailable) or any(floors.values()) or "*" not in floors


def below_floor(in_service: Mapping[str, int], floors: Mapping[str, int]) -> list[str]:
    """The pools (id -> members in service now, id -> floor) below their floor, one line each."""
    return [
        f"{short_name(p)}: {n} in service, min_in_service={floors[p]}"
        for p, n in sorted(in_service.items())
        if n < floors.get(p, 0)
    ]
