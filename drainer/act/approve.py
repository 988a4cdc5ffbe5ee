"""Early approval, as the runner carries it out: gather the facts the pure rule in
``decide_approval.decide_approvals`` needs (connections, the other listed VMs' pool membership), decide, POST
StartRequests, and record each outcome."""

from __future__ import annotations

import json
import time
from typing import Any

from drainer.act.commit import log_transitions
from drainer.base import metrics
from drainer.base.errors import EXIT_ACTION_FAILED, DrainerError
from drainer.config import Config
from drainer.decide.approval import (
    ApprovalFacts,
    approval_candidates,
    approve_at_once,
    decide_approvals,
    record_approval,
    turn,
)
from drainer.decide.core import Approve, DrainState, State
from drainer.io.imds import ImdsClient, InstanceInfo
from drainer.store.state import StateStore


def approve(
    config: Config,
    *,
    log: Any,
    seams: Any,
    store: StateStore,
    imds: ImdsClient,
    vm: InstanceInfo,
    state: State,
    result: Any,
) -> State:
    """Approve this VM's events early where the rule in ``decide_approval.decide_approvals`` allows it."""
    cfg = config.approval
    now = seams.now()
    drained = state.vm.drain_state is DrainState.DRAINED
    connections = None
    if cfg.enabled and cfg.service_ports and drained:
        from drainer.io.connections import count_established  # noqa: PLC0415

        connections = count_established(cfg.service_ports)
    facts = ApprovalFacts(open_connections=connections)
    # Every listed VM, this one included, of the events whose turn it is on this VM.
    listed = {
        r.casefold()
        for c in approval_candidates(state)
        if c.event.event_type.value in cfg.types and not turn(c, vm.name, state.vm, now, cfg)
        for r in c.event.resources
    }
    if config.dry_run:
        listed.discard(vm.name.casefold())  # its drain was not made, only logged: taken as made
    if cfg.enabled and drained and listed and config.drain.method in ("nic", "admin-state"):
        facts = facts._replace(listed_in_pool=_listed_in_pool(config, log, vm, store, listed))
        now = seams.now()  # the reads took time: NotBefore may be near now
    decision = approve_at_once(decide_approvals(state, vm.name, now, cfg, facts), cfg)
    if decision.transitions:
        store.save(state, decision.state, decision.transitions, now)
    log_transitions(log, decision.transitions)
    result.transitions.extend(decision.transitions)
    state = decision.state
    for action in decision.actions:
        if not isinstance(action, Approve):
            continue
        if config.dry_run:
            log.warning("dry-run: would approve (StartRequests)", event_ids=list(action.event_ids))
            continue
        seams.checkpoint("before-approve")
        error: str | None = None
        try:
            imds.approve(action.event_ids)
        except DrainerError as exc:
            error = str(exc)
        seams.checkpoint("after-approve")
        outcome = record_approval(state, action, error, seams.now())
        store.save(state, outcome.state, outcome.transitions, seams.now())
        metrics.current.inc("actions", {"action": "approve", "result": "ok" if error is None else "failed"})
        state = outcome.state
        if error is None:
            log.info("approved early", event_ids=list(action.event_ids))
        else:
            log.error("approval failed; retried on the next run", error=error)
            result.errors.append(error)
            result.exit_code = EXIT_ACTION_FAILED
        log_transitions(log, outcome.transitions)
        result.transitions.extend(outcome.transitions)
    return state


def _listed_in_pool(
    config: Config, log: Any, vm: InstanceInfo, store: StateStore, names: set[str]
) -> frozenset[str] | None:
    """Which of the listed VMs (this one included) are still in a backend pool, read from ARM (None
    on an ARM error: the approval then waits).

    The listed VMs' NICs are found once per set of listed VMs (one subscription-wide NIC list, kept
    in the state's meta). Then, at most every ``[approval] peer_check_interval`` seconds, each NIC
    not yet seen out is read, with one subscription-wide load-balancer list (IP-based pools). Once
    none is left in, every listed VM is read again before the answer is trusted: one seen out
    earlier may have been put back."""
    from drainer.act.lb import make_lb_actuator  # noqa: PLC0415
    from drainer.act.lb_common import listed_nics, still_in_pools  # noqa: PLC0415

    listed = sorted(names)
    cached = _meta_json(store, "peer_check")
    seen_out: set[str] = set()
    if cached.get("listed") == listed:
        seen_out = set(cached.get("out") or [])
        if 0 <= time.time() - float(cached.get("at") or 0) < config.approval.peer_check_interval:
            return frozenset(cached.get("in_pool") or [])
    try:
        actuator: Any = make_lb_actuator(config, vm, log)
        network = actuator.network
        network.start()
        found = _meta_json(store, "listed_nics")
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
    store.set_meta(
        {
            "listed_nics": json.dumps({"listed": listed, "nics": nics}),
            "peer_check": json.dumps(
                {
                    "at": time.time(),
                    "listed": listed,
                    "in_pool": sorted(inside),
                    "out": sorted(set(nics) - inside),
                }
            ),
        }
    )
    return frozenset(inside)


def _meta_json(store: StateStore, key: str) -> dict[str, Any]:
    raw = store.meta(key)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
