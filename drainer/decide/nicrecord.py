"""What drainer took out of a NIC, recorded on the NIC itself as Azure resource tags.

The write that removes a NIC's backend-pool references carries these tags in the same PUT, and the
write that puts the references back removes them: removal and record are one atomic ARM write, and
the record survives the loss of the VM's state directory (a reimaged OS disk, a restored snapshot).

Encoding, sized to Azure's documented tag limits (50 tags per resource; names up to 512 characters,
case-insensitive, none of ``<>%&\\?/``; values up to 256 characters):

- ``drainer:out``: a summary for operators (``out: Reboot 6a3f... since 2026-11-30T03:40:00Z vm=web-0``);
- ``drainer:lb:<ipconfig>:<n>`` / ``drainer:agw:<ipconfig>:<n>``: one removed load-balancer /
  application-gateway pool reference of that ipConfiguration, valued ``<resource group>/<parent>/<pool>``
  (a NIC can only reference pools of its own subscription; resource group names are at most 90
  characters, load balancer, gateway and pool names at most 80, so the value is at most 252);
- ``drainer:adm:<previous state>:<address name>``: a backend address of an IP-based pool that the
  ``admin-state`` method set ``Down``, valued ``<resource group>/<load balancer>/<pool>``;
- ``drainer:mac``: ``v1 <drain> <since> <mac>``, the record's authentication (see ``seal``): an
  HMAC-SHA256 with the VM's record key over every other ``drainer:`` tag, the NIC id, the VM's vmId,
  and the drain it belongs to (its number and when it began). Anyone who can write the NIC's tags (a
  "Tag Contributor") can delete or garble a record, but cannot make one drainer acts on.

Every other tag is foreign and is written back untouched. Everything here is pure: the planners
take a view of the NIC and return the NIC to write; ``seal`` and ``verify`` take the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

SUMMARY = "drainer:out"  # a tag named just "drainer" is an operator's: foreign
MAC = "drainer:mac"  # the record's authentication (``seal``): never covered by itself
MAC_VERSION = "v1"
PREFIX = "drainer:"
MAX_TAGS = 50
MAX_NAME = 512
MAX_VALUE = 256
_FORBIDDEN = set("<>%&\\?/")
_SHORT = {"lb-pool": "lb", "appgw-pool": "agw"}
_KIND = {v: k for k, v in _SHORT.items()}
_PARENT = {"lb-pool": "loadBalancers", "appgw-pool": "applicationGateways"}


class Ref(NamedTuple):
    """One backend-pool reference of an ipConfiguration (``kind``: ``lb-pool`` or ``appgw-pool``)."""

    ipconfig: str
    kind: str
    pool_id: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.ipconfig.lower(), self.kind, self.pool_id.lower())


class AdminRecord(NamedTuple):
    """A backend address the ``admin-state`` method set ``Down``, and the state it had before."""

    pool_id: str
    address: str
    previous: str  # "None" or "Up"

    @property
    def key(self) -> tuple[str, str]:
        return (self.pool_id.lower(), self.address.lower())


class NicView(NamedTuple):
    """What the planners need of a NIC: its id, tags and current pool references."""

    nic_id: str
    tags: Mapping[str, str]
    refs: tuple[Ref, ...]


class Plan(NamedTuple):
    """The NIC to write (``refs`` and ``tags`` after the write) and what the write does."""

    refs: tuple[Ref, ...]
    tags: dict[str, str]
    removed: tuple[Ref, ...] = ()  # drain: the references this write takes out
    restored: tuple[Ref, ...] = ()  # restore: the references this write puts back
    kept: tuple[Ref, ...] = ()  # restore: records kept (their pool's absence is not yet confirmed)
    dropped: tuple[Ref, ...] = ()  # restore: records dropped (their pool is confirmed gone)
    on_nic: bool = True  # the record fits in the NIC's tags (else: keep it locally)

    def changes(self, view: NicView) -> bool:
        """Whether writing this plan changes the NIC (its MAC aside: sealing the same records for
        the same drain gives the same MAC)."""
        return {r.key for r in self.refs} != {r.key for r in view.refs} or _unsealed(view.tags) != _unsealed(
            self.tags
        )


def _unsealed(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.lower() != MAC}


def is_ours(tag_name: str) -> bool:
    return tag_name.lower().startswith(PREFIX)


def foreign(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not is_ours(k)}


def _split_id(resource_id: str) -> tuple[str, str, str, str, str] | None:
    """(subscription, resource group, parent type, parent, pool) of a pool id, or None."""
    parts = resource_id.strip("/").split("/")
    if len(parts) != 10:
        return None
    lowered = [p.lower() for p in parts]
    if (
        lowered[0] != "subscriptions"
        or lowered[2] != "resourcegroups"
        or lowered[4] != "providers"
        or lowered[5] != "microsoft.network"
        or lowered[8] != "backendaddresspools"
    ):
        return None
    return parts[1], parts[3], parts[6], parts[7], parts[9]


def pool_id(subscription: str, group: str, parent_type: str, parent: str, pool: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Network/"
        f"{parent_type}/{parent}/backendAddressPools/{pool}"
    )


def subscription_of(resource_id: str) -> str:
    parts = resource_id.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0].lower() == "subscriptions" else ""


def _short_value(resource_id: str, subscription: str, parent_type: str) -> str | None:
    split = _split_id(resource_id)
    if split is None:
        return None
    sub, group, ptype, parent, pool = split
    if sub.lower() != subscription.lower() or ptype.lower() != parent_type.lower():
        return None
    value = f"{group}/{parent}/{pool}"
    return value if len(value) <= MAX_VALUE else None


def _valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and not (_FORBIDDEN & set(name)) and all(c.isprintable() for c in name)


def encode(refs: Iterable[Ref], admin: Iterable[AdminRecord], subscription: str) -> dict[str, str] | None:
    """Record tags for these references and addresses, or None when one cannot be encoded."""
    tags: dict[str, str] = {}
    counters: dict[tuple[str, str], int] = {}
    for ref in sorted(set(refs), key=lambda r: r.key):
        value = _short_value(ref.pool_id, subscription, _PARENT[ref.kind])
        n = counters.get((ref.ipconfig.lower(), ref.kind), 0)
        counters[(ref.ipconfig.lower(), ref.kind)] = n + 1
        name = f"{PREFIX}{_SHORT[ref.kind]}:{ref.ipconfig}:{n}"
        if value is None or not _valid_name(name) or ":" in ref.ipconfig:
            return None
        tags[name] = value
    for record in sorted(set(admin), key=lambda a: a.key):
        value = _short_value(record.pool_id, subscription, "loadBalancers")
        name = f"{PREFIX}adm:{record.previous}:{record.address}"
        if value is None or not _valid_name(name) or ":" in record.previous:
            return None
        tags[name] = value
    return tags


class Records(NamedTuple):
    refs: list[Ref]
    admin: list[AdminRecord]
    unreadable: dict[str, str]  # ``drainer:`` tags this version cannot read: kept untouched


def decode(tags: Mapping[str, str], subscription: str) -> Records:
    """The records in a NIC's tags."""
    out = Records([], [], {})
    for name, value in tags.items():
        if not name.lower().startswith(PREFIX) or name.lower() in (SUMMARY, MAC):
            continue
        parts = name[len(PREFIX) :].split(":")
        pieces = value.split("/")
        kind = _KIND.get(parts[0].lower())
        if len(pieces) != 3 or not all(pieces):
            out.unreadable[name] = value
        elif kind is not None and len(parts) == 3 and parts[1]:
            group, parent, pool = pieces
            out.refs.append(Ref(parts[1], kind, pool_id(subscription, group, _PARENT[kind], parent, pool)))
        elif parts[0].lower() == "adm" and len(parts) >= 3 and parts[1] in ("None", "Up") and parts[2]:
            group, parent, pool = pieces
            address = ":".join(parts[2:])
            out.admin.append(
                AdminRecord(pool_id(subscription, group, "loadBalancers", parent, pool), address, parts[1])
            )
        else:
            out.unreadable[name] = value
    return out


def with_records(
    tags: Mapping[str, str],
    refs: Iterable[Ref],
    admin: Iterable[AdminRecord],
    subscription: str,
    summary: str,
) -> dict[str, str] | None:
    """``tags`` with drainer's records replaced by these (and the summary), foreign and unreadable
    ``drainer:`` tags kept, the MAC left out (``seal`` adds it). None when the records and their MAC
    do not fit Azure's limits."""
    refs, admin = list(refs), list(admin)
    kept = foreign(tags) | decode(tags, "").unreadable
    if not refs and not admin:
        return kept
    records = encode(refs, admin, subscription)
    if records is None:
        return None
    out = kept | records
    if len(out) + 2 <= MAX_TAGS:  # one slot stays for the MAC
        out[SUMMARY] = summary[:MAX_VALUE]  # the summary is for people: the records come first
    return out if len(out) + 1 <= MAX_TAGS else None


def plan_drain(view: NicView, kinds: Iterable[str], summary: str) -> Plan:
    """Take every reference of ``kinds`` out of the NIC, adding them to the records already on it."""
    kinds = set(kinds)
    subscription = subscription_of(view.nic_id)
    removed = tuple(r for r in view.refs if r.kind in kinds)
    kept_refs = tuple(r for r in view.refs if r.kind not in kinds)
    recorded, admin, _ = decode(view.tags, subscription)
    known = {r.key: r for r in recorded}
    for ref in removed:
        known.setdefault(ref.key, ref)
    if not removed:
        return Plan(refs=view.refs, tags=dict(view.tags))
    tags = with_records(view.tags, known.values(), admin, subscription, summary)
    if tags is None:
        return Plan(refs=kept_refs, tags=dict(view.tags), removed=removed, on_nic=False)
    return Plan(refs=kept_refs, tags=tags, removed=removed)


PoolState = Callable[[Ref], str]  # "present" | "absent" (not yet confirmed) | "gone" (confirmed)


def plan_restore(view: NicView, local: Iterable[Ref], pool_state: PoolState, summary: str) -> Plan:
    """Put back every recorded reference (on the NIC, plus ``local`` ones kept in the state database
    for a NIC that could not hold its record) whose pool exists; keep the record of a pool whose
    absence is not yet confirmed; drop the record of a pool confirmed gone."""
    subscription = subscription_of(view.nic_id)
    recorded, admin, _ = decode(view.tags, subscription)
    wanted: dict[tuple[str, str, str], Ref] = {r.key: r for r in [*recorded, *local]}
    present = {r.key for r in view.refs}
    refs = list(view.refs)
    restored: list[Ref] = []
    kept: list[Ref] = []
    dropped: list[Ref] = []
    for key, ref in sorted(wanted.items()):
        if key in present:
            continue  # already back (an earlier run, or someone else)
        state = pool_state(ref)
        if state == "present":
            refs.append(ref)
            restored.append(ref)
        elif state == "gone":
            dropped.append(ref)
        else:
            kept.append(ref)
    # A record kept locally (the NIC could not hold it) stays local: never moved onto the NIC here.
    on_nic = {r.key for r in recorded}
    tags = with_records(view.tags, [r for r in kept if r.key in on_nic], admin, subscription, summary)
    if tags is None:  # cannot happen when the kept records were readable; keep everything then
        tags = dict(view.tags)
    return Plan(
        refs=tuple(refs), tags=tags, restored=tuple(restored), kept=tuple(kept), dropped=tuple(dropped)
    )


def summary_text(reason: str, since: str, vm_name: str) -> str:
    text = f"out: {reason} since {since} vm={vm_name}"
    return text[:MAX_VALUE]


def plan_admin(view: NicView, admin: Iterable[AdminRecord], summary: str) -> Plan | None:
    """The NIC's tags with its ``admin-state`` records replaced by ``admin`` (its pool-reference
    records kept). None when they do not fit Azure's tag limits."""
    subscription = subscription_of(view.nic_id)
    records = decode(view.tags, subscription)
    tags = with_records(view.tags, records.refs, admin, subscription, summary)
    if tags is None:
        return None
    return Plan(refs=view.refs, tags=tags)


# -- authentication -------------------------------------------------------------------------------


class Seal(NamedTuple):
    """What a record's MAC binds it to besides its tags."""

    nic_id: str
    vm_id: str
    drain: int  # the drain it belongs to (drainer.io.recordkey's counter)
    since: str  # when that drain began (UTC, ISO 8601 seconds: no spaces)


def _covered(tags: Mapping[str, str]) -> list[list[str]]:
    """Every ``drainer:`` tag but the MAC, names lower-cased (Azure compares them case-insensitively)."""
    return sorted([k.lower(), v] for k, v in tags.items() if is_ours(k) and k.lower() != MAC)


def _mac(key: bytes, covered: list[list[str]], seal: Seal) -> str:
    # JSON of a fixed list: an unambiguous encoding whatever the names and values contain.
    message = json.dumps(
        [MAC_VERSION, seal.nic_id.lower(), seal.vm_id.lower(), seal.drain, seal.since, covered],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()  # 43 characters


def seal(tags: Mapping[str, str], key: bytes, binding: Seal) -> dict[str, str]:
    """``tags`` with ``drainer:mac`` set over every other ``drainer:`` tag (removed when there is none).
    The caller leaves out whatever it could not verify: what it seals, it vouches for."""
    out = {k: v for k, v in tags.items() if k.lower() != MAC}
    covered = _covered(out)
    if covered:
        out[MAC] = f"{MAC_VERSION} {binding.drain} {binding.since} {_mac(key, covered, binding)}"
    return out


class Verdict(NamedTuple):
    """What ``verify`` found. ``trusted``: the foreign tags, plus drainer's own when they verify (the
    MAC tag never). ``untrusted``: drainer's tags that do not. ``reason``: "" (verified, or no record)
    or a short code: ``no-key``, ``no-mac``, ``malformed``, ``mac-mismatch``, ``ended-drain``;
    ``detail`` says it for people."""

    trusted: dict[str, str]
    untrusted: dict[str, str]
    reason: str = ""
    detail: str = ""


def verify(
    tags: Mapping[str, str], key: bytes | None, nic_id: str, vm_id: str, open_drain: tuple[int, str] | None
) -> Verdict:
    """Whether drainer wrote the ``drainer:`` tags on this NIC itself, for the drain still open
    (``open_drain``: its number and beginning; None when no drain is open)."""
    ours = {k: v for k, v in tags.items() if is_ours(k) and k.lower() != MAC}
    trusted = foreign(tags)
    if not ours:
        return Verdict(trusted, {})
    mac = next((v for k, v in tags.items() if k.lower() == MAC), None)
    untrusted = {k: v for k, v in tags.items() if is_ours(k)}

    def refuse(reason: str, detail: str) -> Verdict:
        return Verdict(trusted, untrusted, reason, detail)

    if mac is None:
        return refuse(
            "no-mac",
            "no drainer:mac tag: not written by drainer (or by a release before records were signed)",
        )
    parts = mac.split(" ")
    # ASCII only: int() takes "²" (isdigit says yes) and compare_digest refuses non-ASCII text.
    if len(parts) != 4 or parts[0] != MAC_VERSION or not mac.isascii() or not parts[1].isdigit():
        return refuse("malformed", f"drainer:mac is not '{MAC_VERSION} <drain> <since> <mac>'")
    if key is None:
        return refuse(
            "no-key", "this VM has no record key (lost, or never made): the record cannot be checked"
        )
    binding = Seal(nic_id, vm_id, int(parts[1]), parts[2])
    if not hmac.compare_digest(parts[3], _mac(key, _covered(ours), binding)):
        return refuse(
            "mac-mismatch",
            "the MAC does not match: the tags were forged or changed by someone else, or signed with "
            "another key (this VM reimaged, or its record key replaced)",
        )
    if open_drain is None or (binding.drain, binding.since) != open_drain:
        now = f"drain {open_drain[0]} is open" if open_drain else "no drain is open"
        return refuse(
            "ended-drain",
            f"the record of drain {binding.drain} (since {binding.since}), which has ended ({now}): an old "
            "record written back?",
        )
    return Verdict(trusted | ours, {})
