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
    can tell: open connections to the service ports, whether this VM's drain is complete (its
    post-drain hooks succeeded; with the probe method, how long the load balancer needs to see the
    probe fail), and which listed VMs are still in a pool or do not exist."""
    cfg = config.approval
    drained = state.vm.drain_state is DrainState.DRAINED
    connections = None
    if cfg.enabled and cfg.service_ports and drained:
        connections = _open_connections(config)
    facts = ApprovalFacts(
        open_connections=connections,
        phases_failing=tuple(
            sorted({str(p.get("phase")) for p in store.pending_phases() if p.get("phase") in DRAIN_PHASES})
        ),
        takedown_seconds=config.probe.takedown_seconds if config.drain.method == "probe" else 0.0,
    )
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
        inside, missing = _listed_in_pool(config, log, vm, store, effects=effects, names=listed)
        facts = facts._replace(listed_in_pool=inside, listed_missing=missing)
    return facts


# The hook phases of a drain that must have succeeded before the VM counts as out of rotation.
DRAIN_PHASES = ("post-drain",)


def _listed_in_pool(
    config: Config, log: Logger, vm: InstanceInfo, store: StateStore, *, effects: Effects, names: set[str]
) -> tuple[frozenset[str] | None, frozenset[str]]:
    """Which of the listed VMs (this one included) are still in a backend pool, read from ARM (None
    on an ARM error: the approval then waits), and which do not exist.

    The listed VMs' NICs are found once per set of listed VMs (one small GET of each other VM's
    resource; this VM's NICs are known for the boot), kept in the state's meta. Each check reads
    every listed VM's NICs, and the subscription's load balancers only once no NIC is left in a
    pool. A waiting answer is reused for ``[approval] peer_check_interval`` seconds; an answer that
    lets the approval go is never a kept one: it is read in this run, right before the POST."""
    from drainer.act.lb import make_network  # noqa: PLC0415
    from drainer.act.lb_common import listed_nics, still_in_pools  # noqa: PLC0415

    listed = sorted(names)
    cached = store.peer_check()
    waiting = cached.get("listed") == listed and bool(cached.get("in_pool") or cached.get("missing"))
    if waiting and 0 <= time.time() - float(cached.get("at") or 0) < config.approval.peer_check_interval:
        return frozenset(cached.get("in_pool") or []), frozenset(cached.get("missing") or [])
    try:
        network = make_network(config, vm, log, effects)
        network.start()
        found = store.listed_nics()
        nics: dict[str, list[str] | None] = found.get("nics") or {}
        if found.get("listed") != listed:
            own = store.own_nics(vm.resource_id)
            nics = listed_nics(network, vm, names, {vm.name.casefold(): own} if own else None)
            missing = sorted(n for n, ids in nics.items() if ids is None)
            if missing:
                log.warning("listed VMs not found as VM resources: approval waits for NotBefore", vms=missing)
        # The likeliest to be still in first (those in last time, then the others, this VM last):
        # a waiting answer mostly costs one read.
        before = set(cached.get("in_pool") or []) if cached.get("listed") == listed else set()
        order = sorted(nics, key=lambda n: (n not in before, n == vm.name.casefold(), n))
        inside = still_in_pools(network, {n: ids for n in order if (ids := nics[n]) is not None})
    except DrainerError as exc:
        log.warning("could not read the listed VMs' pool membership", error=str(exc))
        return None, frozenset()
    gone = frozenset(n for n, ids in nics.items() if ids is None)
    store.set_peer_check(
        listed_nics={"listed": listed, "nics": nics},
        peer_check={"at": time.time(), "listed": listed, "in_pool": sorted(inside), "missing": sorted(gone)},
    )
    return frozenset(inside), gone


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
