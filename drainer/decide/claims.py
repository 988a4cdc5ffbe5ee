"""The fleet's floor as pure rules: claims in the lease's tags, and whether this VM may take a slot.

A claim says "VM x is taking these members out of these pools by its own choice, until it is back
in" and lives in one tag of the lease (an application security group the operator provides)::

    drainer:claim:<vm name, lower case> = <expires, epoch seconds>;<flags>;<pool keys>;<member keys>

Keys are the first 8 hex digits of the SHA-256 of the lower-cased pool id, NIC id or ``ip:<address>``
(so a claim fits one 256-character tag value with 25 pools and members). ``flags`` is ``f`` for a
drain the platform forced (taken whatever the floor said).

The rule (``admit``): for every pool this VM leaves, the members still in service once it is out,
not counting members that other live claims are taking out, must be at least ``min_in_service``; and
with ``max_unavailable`` set, fewer than that many other live claims may name the pool. The lease is
written with ``If-Match``: two VMs deciding at once cannot both write from the same reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple

PREFIX = "drainer:claim:"
MAX_VALUE = 256  # Azure's limit on a tag value


class Claim(NamedTuple):
    vm: str  # lower case
    expires: int  # epoch seconds
    pools: frozenset[str]  # keys
    members: frozenset[str]  # keys
    forced: bool = False


def key(resource: str) -> str:
    """The short key of a pool id, NIC id or ``ip:<address>``."""
    return hashlib.sha256(resource.lower().encode()).hexdigest()[:8]


def encode(claim: Claim) -> tuple[str, str]:
    """The tag (name, value) of a claim. Raises ValueError when it does not fit a tag value."""
    value = ";".join(
        (
            str(claim.expires),
            "f" if claim.forced else "",
            ",".join(sorted(claim.pools)),
            ",".join(sorted(claim.members)),
        )
    )
    if len(value) > MAX_VALUE:
        raise ValueError(
            f"a claim on {len(claim.pools)} pools and {len(claim.members)} members does not fit a tag"
        )
    return PREFIX + claim.vm.lower(), value


def decode(tags: Mapping[str, str] | None) -> tuple[list[Claim], list[str]]:
    """The claims in the lease's tags, and the names of claim tags that could not be read."""
    claims: list[Claim] = []
    unreadable: list[str] = []
    for name, value in (tags or {}).items():
        if not name.lower().startswith(PREFIX):
            continue
        parts = str(value).split(";")
        try:
            expires = int(parts[0])
        except ValueError:
            expires = -1
        if len(parts) != 4 or expires < 0:
            unreadable.append(name)
            continue
        claims.append(
            Claim(
                vm=name[len(PREFIX) :].lower(),
                expires=expires,
                pools=frozenset(p for p in parts[2].split(",") if p),
                members=frozenset(m for m in parts[3].split(",") if m),
                forced="f" in parts[1],
            )
        )
    return claims, unreadable


def live(claims: Iterable[Claim], now: float) -> list[Claim]:
    return [c for c in claims if c.expires > now]


class Verdict(NamedTuple):
    ok: bool
    reason: str  # why not (or "" when ok)
    short: dict[str, int]  # pool id -> members that would be left in service, for each pool short


def admit(
    me: str,
    pools: Mapping[str, Iterable[str]],
    claims: Iterable[Claim],
    now: float,
    *,
    min_in_service: int,
    max_unavailable: int,
) -> Verdict:
    """Whether VM ``me`` may take itself out of ``pools`` (pool id -> the ids of the *other* members
    in service there) given the other VMs' live claims."""
    others = [c for c in live(claims, now) if c.vm != me.lower()]
    short: dict[str, int] = {}
    reasons: list[str] = []
    for pool_id, members in pools.items():
        pool_key = key(pool_id)
        touching = [c for c in others if pool_key in c.pools]
        leaving: set[str] = set()
        for claim in touching:
            leaving |= claim.members
        left = sum(1 for m in set(members) if key(m) not in leaving)
        name = _short(pool_id)
        if left < min_in_service:
            short[pool_id] = left
            reasons.append(f"{name}: {left} left in service, {len(touching)} other VMs leaving")
        elif max_unavailable and len(touching) >= max_unavailable:
            short[pool_id] = left
            reasons.append(f"{name}: {len(touching)} of max_unavailable={max_unavailable} slots taken")
    if short:
        return Verdict(False, "; ".join(reasons), short)
    return Verdict(True, "", {})


def _short(pool_id: str) -> str:
    parts = pool_id.strip("/").split("/")
    return "/".join(parts[-3::2]) if len(parts) >= 3 else pool_id


def with_claim(tags: Mapping[str, str] | None, claim: Claim, now: float) -> dict[str, str]:
    """The lease's tags with ``claim`` written and expired claims of others dropped."""
    name, value = encode(claim)
    result = _without_expired(tags, now)
    result = {k: v for k, v in result.items() if k.lower() != name}
    result[name] = value
    return result


def without_claim(tags: Mapping[str, str] | None, vm: str, now: float) -> dict[str, str] | None:
    """The lease's tags without ``vm``'s claim (and expired ones); None if it holds none."""
    name = PREFIX + vm.lower()
    if not any(k.lower() == name for k in tags or {}):
        return None
    return {k: v for k, v in _without_expired(tags, now).items() if k.lower() != name}


def _without_expired(tags: Mapping[str, str] | None, now: float) -> dict[str, str]:
    claims, _ = decode(tags)
    expired = {PREFIX + c.vm for c in claims if c.expires <= now}
    return {k: v for k, v in (tags or {}).items() if k.lower() not in expired}
