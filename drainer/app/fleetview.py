"""``drainer fleet``: every VM of this VM's backend pools (or of the pools named), in or out of
rotation, what holds it out and since when (drainer's record on its NIC), and the intent on its NIC
of a VM announcing it leaves the pool (the fleet's floor). Read-only: one subscription-wide NIC list.

Runs on a VM (its identity and pools from IMDS and ARM) or on an operator's machine with read rights
(``[azure] identity = "default"`` and ``--pool`` ids: the subscription comes from them).
"""

from __future__ import annotations

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
from drainer.io.arm import ArmNetwork, Network


def fleet(config: Config, pools: Sequence[str], *, as_json: bool) -> int:
    """Print the fleet view. Raises DrainerError (IMDS, ARM, a bad pool id)."""
    subscription = ""
    vm_name = ""
    if pools:
        for pool in pools:
            if "/backendaddresspools/" not in pool.lower():
                raise ConfigError("--pool", "", f"not a backend pool id: {pool!r}")
        subscription = subscription_of(pools[0])
    else:
        from drainer.io.imds import ImdsClient  # noqa: PLC0415

        vm = ImdsClient(config.imds).instance()
        subscription, vm_name = vm.subscription_id, vm.name
    network: Network = ArmNetwork(
        config.azure, subscription_id=subscription, imds_endpoint=config.imds.endpoint
    )
    network.start()
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
