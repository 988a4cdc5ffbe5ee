"""Early approval's facts: what the pure rule in ``decide.approval.decide_approvals`` needs from this
VM and from ARM (connections, the other listed VMs' pool membership). Deciding is the rule's; the
POST is an ``Approve`` action of the executor."""

from __future__ import annotations

import time
from datetime import datetime

from drainer.act.effects import Effects
from drainer.base.errors import DrainerError
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.approval import ApprovalFacts, approval_candidates, turn
from drainer.decide.model import DrainState, State
from drainer.store.state import StateStore


def approval_facts(
    config: Config,
    *,
    log: Logger,
    effects: Effects,
    store: StateStore,
    vm: InstanceInfo,
    state: State,
    now: datetime,
) -> ApprovalFacts:
    """What the pure rule in ``decide_approval.decide_approvals`` needs that only this VM and ARM
    can tell: open connections to the service ports, and which listed VMs are still in a pool."""
    cfg = config.approval
    drained = state.vm.drain_state is DrainState.DRAINED
    connections = None
    if cfg.enabled and cfg.service_ports and drained:
        connections = _open_connections(config)
    facts = ApprovalFacts(open_connections=connections)
    # Every listed VM, this one included, of the events whose turn it is on this VM.
    listed = {
        r.casefold()
        for c in approval_candidates(state)
        if c.event.event_type.value in cfg.types and not turn(c, vm.name, state.vm, now, cfg)
        for r in c.event.resources
    }
    if not effects.own_drain_visible():
        listed.discard(vm.name.casefold())  # its drain was not made, only logged: taken as made
    if cfg.enabled and drained and listed and config.drain.method in ("nic", "admin-state"):
        facts = facts._replace(
            listed_in_pool=_listed_in_pool(config, log, vm, store, effects=effects, names=listed)
        )
    return facts


def _listed_in_pool(
    config: Config, log: Logger, vm: InstanceInfo, store: StateStore, *, effects: Effects, names: set[str]
) -> frozenset[str] | None:
    """Which of the listed VMs (this one included) are still in a backend pool, read from ARM (None
    on an ARM error: the approval then waits).

    The listed VMs' NICs are found once per set of listed VMs (one subscription-wide NIC list, kept
    in the state's meta). Then, at most every ``[approval] peer_check_interval`` seconds, each NIC
    not yet seen out is read, with one subscription-wide load-balancer list (IP-based pools). Once
    none is left in, every listed VM is read again before the answer is trusted: one seen out
    earlier may have been put back."""
    from drainer.act.lb import make_network  # noqa: PLC0415
    from drainer.act.lb_common import listed_nics, still_in_pools  # noqa: PLC0415

    listed = sorted(names)
    cached = store.peer_check()
    seen_out: set[str] = set()
    if cached.get("listed") == listed:
        seen_out = set(cached.get("out") or [])
        if 0 <= time.time() - float(cached.get("at") or 0) < config.approval.peer_check_interval:
            return frozenset(cached.get("in_pool") or [])
    try:
        network = make_network(config, vm, log, effects)
        network.start()
        found = store.listed_nics()
        nics: dict[str, list[str]] = found.get("nics") or {}
        if found.get("listed") != listed:
            nics = listed_nics(network, vm, names)
            missing = sorted(n for n, ids in nics.items() if not ids)
            if missing:
                log.warning("listed VMs whose NICs were not found: not approving for them", vms=missing)
        inside = still_in_pools(network, {n: ids for n, ids in nics.items() if n not in seen_out})
        if not inside and seen_out:
            inside = still_in_pools(network, nics)
    except DrainerError as exc:
        log.warning("could not read the listed VMs' pool membership", error=str(exc))
        return None
    store.set_peer_check(
        listed_nics={"listed": listed, "nics": nics},
        peer_check={
            "at": time.time(),
            "listed": listed,
            "in_pool": sorted(inside),
            "out": sorted(set(nics) - inside),
        },
    )
    return frozenset(inside)


def _open_connections(config: Config) -> int | None:
    """Established connections to the service ports (``"auto"``: every port this VM listens on beyond
    loopback, except SSH and drainer's own probe and metrics ports); None where they cannot be read."""
    from drainer.config import parse_address  # noqa: PLC0415
    from drainer.io.connections import count_established, listening_ports  # noqa: PLC0415

    ports = config.approval.service_ports
    if ports == "auto":
        own = {parse_address(config.probe.address)[1], parse_address(config.metrics.address)[1]}
        found = listening_ports(exclude=own)
        if found is None:
            return None
        ports = tuple(found)
    return count_established(ports if isinstance(ports, tuple) else ())
