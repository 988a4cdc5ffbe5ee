"""``drainer fleet``: every VM of this VM's backend pools (or of the pools named), in or out of
rotation, what holds it out and since when (drainer's record on its NIC), and the intent on its NIC
of a VM announcing it leaves the pool (the fleet's floor). Read-only: one subscription-wide NIC list.

Runs on a VM (its identity and pools from IMDS and ARM) or on an operator's machine with read rights
(``[azure] identity = "default"`` and ``--pool`` ids: the subscription comes from them).
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Sequence
from typing import Any

from drainer.act.lb_common import ResourceId
from drainer.base.errors import EXIT_OK, ConfigError
from drainer.base.terminal import printable
from drainer.config import Config
from drainer.decide import intents
from drainer.decide.nicrecord import SUMMARY, subscription_of
from drainer.decide.nicrecord import decode as decode_records
from drainer.io.arm import ArmError, ArmNetwork, Network


def fleet(config: Config, pools: Sequence[str], *, as_json: bool) -> int:
    """Print the fleet view. Raises DrainerError (IMDS, ARM); ConfigError (exit 2) for a ``--pool``
    that names no backend pool, or more than one."""
    subscription = ""
    vm_name = ""
    if pools and all(_is_pool_id(p) for p in pools):
        subscription = subscription_of(pools[0])
    else:
        from drainer.io.imds import ImdsClient  # noqa: PLC0415

        vm = ImdsClient(config.imds).instance()
        subscription, vm_name = vm.subscription_id, vm.name
    network: Network = ArmNetwork(
        config.azure, subscription_id=subscription, imds_endpoint=config.imds.endpoint
    )
    network.start()
    if pools:
        pools = resolve_pools(network, pools, subscription)
    nics = network.list_all_nics()
    rows = [_row(nic, subscription) for nic in nics if nic.virtual_machine is not None]
    wanted = {p.lower() for p in pools} or {
        p for r in rows if r["vm"].lower() == vm_name.lower() for p in (*r["in"], *r["out"])
    }
    view = []
    for pool in sorted(wanted):
        members = []
        for row in rows:
            state = "in" if pool in row["in"] else "out" if pool in row["out"] else ""
            if not state:
                continue
            intent = row["intent"]
            members.append(
                {
                    "vm": row["vm"],
                    "nic": row["nic"],
                    "in_rotation": state == "in",
                    "record": row["record"] if state == "out" else None,
                    "intent": intent if intent and intents.key(pool) in intent["pools"] else None,
                }
            )
        view.append({"pool": pool, "in_service": sum(m["in_rotation"] for m in members), "members": members})
    if as_json:
        print(json.dumps({"pools": view}, indent=2))
        return EXIT_OK
    if not view:
        print("no backend pool found (name them with --pool)")
    for entry in view:
        print(
            printable(f"{_name(entry['pool'])}: {entry['in_service']} of {len(entry['members'])} in service")
        )
        for m in sorted(entry["members"], key=lambda m: m["vm"]):
            line = f"  {m['vm']:<24} {'IN ' if m['in_rotation'] else 'OUT'}"
            if m["record"]:
                line += f"  {m['record']}"
            if m["intent"]:
                forced = ", forced" if m["intent"]["forced"] else ""
                line += f"  [leaving: intent until {m['intent']['expires']}{forced}]"
            print(printable(line))
    return EXIT_OK


def _is_pool_id(text: str) -> bool:
    return text.startswith("/") and "/backendaddresspools/" in text.lower()


_SHOWN = 20  # pools named in one refusal at most


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def match_pool(wanted: str, pool_ids: Sequence[str]) -> list[str]:
    """The pool ids ``wanted`` names: a full id, or ``pool``, ``lb/pool`` or ``group/lb/pool``
    (ARM names are case-insensitive). Pure."""
    if wanted.startswith("/"):
        return [p for p in pool_ids if p.lower() == wanted.rstrip("/").lower()]
    parts = [part.lower() for part in wanted.strip("/").split("/")]
    if not 1 <= len(parts) <= 3 or not all(parts):
        return []
    found = []
    for pool_id in pool_ids:
        rid = ResourceId.parse(pool_id)
        names = [rid.resource_group.lower(), rid.name.lower(), rid.child.lower()]
        if names[-len(parts) :] == parts:
            found.append(pool_id)
    return found


def resolve_pools(network: Network, wanted: Sequence[str], subscription: str) -> list[str]:
    """The backend pool ids ``--pool`` names, each a full id or a name resolved among the load
    balancers of ``subscription``; an application gateway pool only by full id (read to check it).
    Raises ConfigError naming what exists when one names no pool or several; ArmError."""
    known = [
        str(pool.id)
        for lb in network.list_all_load_balancers()
        for pool in lb.backend_address_pools or []
        if pool.id
    ]
    names = sorted({_short_name(p, 2) for p in known})
    resolved = []
    for text in wanted:
        if _is_pool_id(text) and "/applicationgateways/" in text.lower():
            resolved.append(_gateway_pool(network, text))
            continue
        found = match_pool(text, known)
        if not found:
            depth = min(3, text.strip("/").count("/") + 1)
            alike = sorted({_short_name(p, depth) for p in known}) if not text.startswith("/") else []
            close = difflib.get_close_matches(text, alike, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            there = f"pools there: {_listing(names)}" if names else "it has no load balancer pool"
            raise ConfigError(
                "--pool", "", f"no backend pool {text!r} in subscription {subscription}{hint}; {there}"
            )
        if len(found) > 1:
            full = sorted(_name(p) for p in found)
            raise ConfigError(
                "--pool",
                "",
                f"{text!r} names {len(found)} pools: {_listing(full)}; name one as group/lb/pool or by id",
            )
        resolved.append(found[0])
    return resolved


def _short_name(pool_id: str, depth: int) -> str:
    """``pool`` (1), ``lb/pool`` (2) or ``group/lb/pool`` (3)."""
    rid = ResourceId.parse(pool_id)
    return "/".join([rid.resource_group, rid.name, rid.child][-depth:])


def _gateway_pool(network: Network, pool_id: str) -> str:
    rid = ResourceId.parse(pool_id)
    try:
        gateway = network.get_app_gateway(rid.resource_group, rid.name)
    except ArmError as exc:
        if exc.status != 404:
            raise
        raise ConfigError("--pool", "", f"no application gateway {rid.resource_group}/{rid.name}") from exc
    for pool in gateway.backend_address_pools or []:
        if str(pool.id).lower() == pool_id.rstrip("/").lower():
            return str(pool.id)
    there = _listing(sorted(str(p.name) for p in gateway.backend_address_pools or []))
    raise ConfigError(
        "--pool", "", f"application gateway {rid.name} has no pool {rid.child!r}; pools there: {there}"
    )


def _row(nic: Any, subscription: str) -> dict[str, Any]:
    tags = dict(nic.tags or {})
    refs = {
        str(p.id).lower()
        for c in nic.ip_configurations or []
        for p in [
            *(c.load_balancer_backend_address_pools or []),
            *(c.application_gateway_backend_address_pools or []),
        ]
    }
    recorded = {r.pool_id.lower() for r in decode_records(tags, subscription).refs}
    return {
        "vm": str(nic.virtual_machine.id).rstrip("/").rsplit("/", 1)[-1],
        "nic": str(nic.id),
        "in": refs,
        "out": recorded - refs,
        "record": tags.get(SUMMARY),
        "intent": _intent(tags),
    }


def _intent(tags: dict[str, str]) -> dict[str, Any] | None:
    found = intents.intent_of(tags)
    if found is None:
        return None
    intent = found[1]
    return {
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(intent.expires)),
        "expired": intent.expires <= time.time(),
        "forced": intent.forced,
        "pools": sorted(intent.pools),
    }


def _name(pool_id: str) -> str:
    rid = ResourceId.parse(pool_id)
    return f"{rid.resource_group}/{rid.name}/{rid.child}"
