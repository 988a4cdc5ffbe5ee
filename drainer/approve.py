"""Early approval, as the runner carries it out: gather the facts the pure rule in
``decide_approval.decide_approvals`` needs (connections, the other listed VMs' pool membership), decide, POST
StartRequests, and record each outcome."""

from __future__ import annotations

import json
import time
from typing import Any

from drainer import metrics
from drainer.config import Config
from drainer.core import Approve, DrainState, State
from drainer.decide_approval import (
    ApprovalFacts,
    approval_candidates,
    approve_at_once,
    decide_approvals,
    record_approval,
)
from drainer.errors import EXIT_ACTION_FAILED, DrainerError
from drainer.imds import ImdsClient, InstanceInfo
from drainer.state import StateStore


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
    from drainer.runner import log_transitions  # noqa: PLC0415 - the runner imports this module

    cfg = config.approval
    now = seams.now()
    drained = state.vm.drain_state is DrainState.DRAINED
    connections = None
    if cfg.enabled and cfg.service_ports and drained:
        from drainer.connections import count_established  # noqa: PLC0415

        connections = count_established(cfg.service_ports)
    facts = ApprovalFacts(open_connections=connections)
    listed = {r.casefold() for c in approval_candidates(state) for r in c.event.resources}
    if cfg.enabled and drained and len(listed) > 1 and config.drain.method in ("nic", "admin-state"):
        in_rotation, visible = _peer_facts(config, log, vm, store, listed)
        facts = facts._replace(peers_in_rotation=in_rotation, pool_members=visible)
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


def _peer_facts(
    config: Config, log: Any, vm: InstanceInfo, store: StateStore, listed: set[str]
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """Which listed VMs share this VM's pools and are still in them, read from ARM. On an ARM error
    the peers stay unknown (the approval then waits, or goes ahead near NotBefore).

    While an approval waits for the other VMs, the daemon would ask every second: the answer is
    reused for ``[approval] peer_check_interval`` seconds (kept in the state's meta) to spare ARM's
    read quota."""
    from drainer.lb import make_lb_actuator  # noqa: PLC0415
    from drainer.lb_common import peers  # noqa: PLC0415

    cached = store.meta("peer_check")
    if cached:
        try:
            data = json.loads(cached)
            fresh = 0 <= time.time() - float(data["at"]) < config.approval.peer_check_interval
            if data["listed"] == sorted(listed) and fresh:
                return frozenset(data["in_rotation"]), frozenset(data["members"])
        except (ValueError, KeyError, TypeError):
            pass
    try:
        actuator: Any = make_lb_actuator(config, vm, log)
        result = peers(actuator.network, vm, store.ledger(), listed)
    except DrainerError as exc:
        log.warning("could not read the other VMs' pool membership", error=str(exc))
        return None, None
    store.set_meta(
        {
            "peer_check": json.dumps(
                {
                    "at": time.time(),
                    "listed": sorted(listed),
                    "in_rotation": sorted(result[0]),
                    "members": sorted(result[1]),
                }
            )
        }
    )
    return result
