"""One run of the agent: observe IMDS, decide, persist, act, record. Shared by ``check`` and the
daemon.

Order of a run (each step is a crash point; see ``Seams.checkpoint``):
lock → load state → identify VM → GET scheduled events → decide → save (intents first) → for each
action: act → save outcome. A run killed anywhere leaves a state the next run completes: intents
(``draining``/``restoring``) are persisted before the action, outcomes after it, and every action is
idempotent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from drainer import metrics
from drainer.config import Config
from drainer.core import (
    ApprovalFacts,
    Approve,
    Decision,
    Drain,
    DrainState,
    Observation,
    Restore,
    State,
    Transition,
    approval_candidates,
    decide_approvals,
    record_approval,
    record_outcome,
    restore_gate,
    set_manual,
    step,
)
from drainer.errors import EXIT_ACTION_FAILED, EXIT_OK, DrainerError, DrainHeldError, MalformedDocumentError
from drainer.imds import ImdsClient, InstanceInfo
from drainer.lock import RunLock
from drainer.state import StateStore

if TYPE_CHECKING:
    from drainer.actions import Actuator

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
LAST_CHECK_FILE = "last-check"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _no_checkpoint(_: str) -> None:
    return None


class Seams(NamedTuple):
    """What a test may replace: the clock, the boot id source and a crash-injection checkpoint.

    Production code uses the defaults; ``checkpoint`` is called with a step name at every step
    boundary so tests can kill the process there.
    """

    now: Callable[[], datetime] = _utcnow
    boot_id_path: str = BOOT_ID_PATH
    checkpoint: Callable[[str], None] = _no_checkpoint
    actuator: Actuator | None = None


class RunResult:
    """What one run did (mutable: filled in as the run goes)."""

    def __init__(self) -> None:
        self.exit_code = EXIT_OK
        self.transitions: list[Transition] = []
        self.errors: list[str] = []
        self.held_by: list[str] = []  # events holding the VM out after the run


def read_boot_id(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None  # not Linux, or no procfs: reboots are then not detected


def touch_last_check(state_dir: str) -> None:
    """Record a successful check as the mtime of a small file: no database write when idle."""
    (Path(state_dir) / LAST_CHECK_FILE).touch()


def last_check(state_dir: str) -> datetime | None:
    try:
        mtime = (Path(state_dir) / LAST_CHECK_FILE).stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(mtime, timezone.utc)


def resolve_vm(config: Config, store: StateStore, imds: ImdsClient) -> InstanceInfo:
    """This VM's identity: the cache in state, else instance metadata (then cached).

    ``vm.name`` in the config overrides the name. Raises ImdsError, MalformedDocumentError.
    """
    cached = store.meta("vm")
    info: InstanceInfo | None = None
    if cached:
        try:
            info = InstanceInfo.from_json(json.loads(cached), source=str(store.path))
        except (ValueError, MalformedDocumentError):
            info = None
    if info is None:
        info = imds.instance()
        store.set_meta({"vm": json.dumps(info.to_json())})
    if config.vm_name and config.vm_name != info.name:
        info = info._replace(name=config.vm_name)
    return info


def log_transitions(log: Any, transitions: list[Transition] | tuple[Transition, ...]) -> None:
    for t in transitions:
        fields: dict[str, Any] = {"from_state": t.from_state, "to_state": t.to_state}
        if t.event_id:
            fields["event_id"] = t.event_id
            fields["event_type"] = t.event_type
        log.info(f"{t.subject} transition", reason=t.reason, **fields)


def run_once(
    config: Config,
    log: Any,
    seams: Seams | None = None,
    *,
    manual: bool | None = None,
    imds: ImdsClient | None = None,
) -> RunResult:
    """One complete run. Raises DrainerError subclasses for failures that stop the run early.

    ``manual``: an operator's ``drainer drain`` (True) or ``drainer restore`` (False) before deciding.
    ``imds``: a client kept across runs (the daemon: keep-alive and ETag); else one for this run.
    """
    seams = seams or Seams()
    result = RunResult()
    with RunLock(config.state_dir):
        store = StateStore(config.state_dir)
        client = imds or ImdsClient(config.imds)
        try:
            _run_locked(config, log=log, seams=seams, store=store, imds=client, result=result, manual=manual)
        finally:
            if imds is None:
                client.close()
            store.close()
    metrics.current.set("last_check", {}, time.time())
    return result


def _run_locked(
    config: Config,
    *,
    log: Any,
    seams: Seams,
    store: StateStore,
    imds: ImdsClient,
    result: RunResult,
    manual: bool | None,
) -> None:
    state = store.load()
    vm = resolve_vm(config, store, imds)
    document = imds.scheduled_events()
    if manual is not None:
        by_hand = set_manual(state, manual, seams.now())
        if by_hand.transitions and not config.dry_run:
            store.save(state, by_hand.state, by_hand.transitions, seams.now())
        log_transitions(log, by_hand.transitions)
        result.transitions.extend(by_hand.transitions)
        state = by_hand.state
    for warning in document.warnings:
        log.warning(
            "scheduled event not taken at face value",
            event_id=warning.event_id,
            reason=warning.reason,
            ignored=warning.ignored,
        )
    now = seams.now()
    observation = Observation(document=document, vm_name=vm.name, boot_id=read_boot_id(seams.boot_id_path))
    decision = step(state, observation, now, config.policy)
    log.debug(
        "scheduled events",
        incarnation=document.incarnation,
        events=len(document.events),
        actions=[a.name for a in decision.actions],
    )
    seams.checkpoint("decided")
    if not config.dry_run:
        # An idle run changes nothing: skip the transaction (and its fsync) entirely.
        if decision.transitions or decision.state != state:
            store.save(state, decision.state, decision.transitions, now)
        touch_last_check(config.state_dir)
    seams.checkpoint("saved")
    log_transitions(log, decision.transitions)
    result.transitions.extend(decision.transitions)
    state = decision.state
    for t in decision.transitions:
        if t.subject == "event" and t.from_state in {"new", "cleared"}:
            record = state.events.get(t.event_id.casefold())
            status = record.event.status.value if record else ""
            metrics.current.inc("events_seen", {"event_type": t.event_type, "event_status": status})
    # Hook phases that failed on earlier runs are retried after this run's actions; a phase that
    # fails during this run waits for the next one.
    earlier_failures = store.meta("pending_phases")
    _run_event_hooks(config, log, store=store, vm=vm, state=state, transitions=decision.transitions)
    actions = [a for a in decision.actions if isinstance(a, (Drain, Restore))]
    if actions:
        state = _act(
            config,
            log=log,
            seams=seams,
            store=store,
            vm=vm,
            state=state,
            actions=actions,
            result=result,
        )
    if config.approval.enabled and approval_candidates(state):
        state = _approve(
            config, log=log, seams=seams, store=store, imds=imds, vm=vm, state=state, result=result
        )
    if state.vm.drain_state in (DrainState.DRAINING, DrainState.DRAINED):
        result.held_by = [state.events[k].event.event_id for k in state.vm.held_by if k in state.events]
    if earlier_failures not in (None, "", "[]"):
        _retry_failed_hooks(config, log, store=store, vm=vm, state=state, earlier=earlier_failures)
    metrics.record_drain_state(state.vm.drain_state.value)


def _hooks_phase_exists(config: Config, phase: str) -> bool:
    return (Path(config.hooks.dir) / phase).is_dir()


def _run_event_hooks(
    config: Config,
    log: Any,
    *,
    store: StateStore,
    vm: InstanceInfo,
    state: State,
    transitions: Sequence[Transition],
) -> None:
    """on-event hooks for each event seen for the first time (or again after it cleared)."""
    new = [t.event_id for t in transitions if t.subject == "event" and t.from_state in {"new", "cleared"}]
    if not new or not _hooks_phase_exists(config, "on-event"):
        return
    from drainer.hooks import HookRunner, PendingPhases  # noqa: PLC0415 - only when there are hooks to run

    runner = HookRunner(config, log, os.environ)
    pending = PendingPhases(None if config.dry_run else store)
    for event_id in new:
        record = state.events.get(event_id.casefold())
        if record is not None and not runner.run_phase("on-event", vm=vm, events=[record]).ok:
            pending.add("on-event", [event_id], "any")


def _retry_failed_hooks(
    config: Config, log: Any, *, store: StateStore, vm: InstanceInfo, state: State, earlier: str | None
) -> None:
    if config.dry_run:
        return
    from drainer.hooks import HookRunner, PendingPhases, retry_pending  # noqa: PLC0415

    retry_pending(
        HookRunner(config, log, os.environ),
        PendingPhases(store),
        vm=vm,
        drain_state=state.vm.drain_state.value,
        events=state.events,
        earlier=earlier,
    )


def _act(
    config: Config,
    *,
    log: Any,
    seams: Seams,
    store: StateStore,
    vm: InstanceInfo,
    state: State,
    actions: Sequence[Drain | Restore],
    result: RunResult,
) -> State:
    """Carry out the decided actions, each with its hooks, and record each outcome."""
    # Not on the idle path: the actions (and, for the load-balancer methods, the Azure SDK).
    from drainer.actions import ActionContext, make_actuator  # noqa: PLC0415
    from drainer.hooks import HookedActuator, HookRunner, PendingPhases  # noqa: PLC0415
    from drainer.ledger import Ledger, MemoryLedger, StoreLedger  # noqa: PLC0415

    try:
        actuator = seams.actuator or make_actuator(config, vm, log)
    except DrainerError as exc:
        actuator = _FailingActuator(exc)
    actuator = HookedActuator(
        actuator, HookRunner(config, log, os.environ), PendingPhases(None if config.dry_run else store)
    )
    ledger: Ledger = MemoryLedger(store.ledger()) if config.dry_run else StoreLedger(store, seams.now)
    for action in actions:
        if isinstance(action, Restore) and not _restore_gate_open(config, log, seams, state):
            continue
        keys = [e.casefold() for e in action.event_ids] if isinstance(action, Drain) else state.vm.held_by
        events = tuple(state.events[k] for k in keys if k in state.events)
        ctx = ActionContext(
            config=config,
            vm=vm,
            events=events,
            log=log,
            ledger=ledger,
            store=None if config.dry_run else store,
            checkpoint=seams.checkpoint,
        )
        seams.checkpoint(f"before-{action.name}")
        started = time.monotonic()
        error: str | None = None
        held = False
        try:
            if isinstance(action, Drain):
                actuator.drain(action, ctx)
            else:
                actuator.restore(action, ctx)
        except DrainHeldError as exc:
            error, held = exc.reason, True
        except DrainerError as exc:
            error = str(exc)
        elapsed = round(time.monotonic() - started, 3)
        seams.checkpoint(f"after-{action.name}")
        outcome: Decision = record_outcome(state, action, error, seams.now(), held=held)
        if not config.dry_run:
            store.save(state, outcome.state, outcome.transitions, seams.now())
        seams.checkpoint(f"recorded-{action.name}")
        state = outcome.state
        result_label = "ok" if error is None else ("held" if held else "failed")
        metrics.current.inc("actions", {"action": action.name, "result": result_label})
        metrics.current.observe("action_duration", {"action": action.name}, elapsed)
        if error is None and isinstance(action, Restore):
            for record in events:
                done = outcome.state.events.get(record.event.key, record)
                if done.left_rotation_at is not None and done.returned_at is not None:
                    seconds = (done.returned_at - done.left_rotation_at).total_seconds()
                    metrics.current.set(
                        "out_of_rotation", {"event_type": done.event.event_type.value}, seconds
                    )
        if error is None:
            log.info(f"{action.name} succeeded", seconds=elapsed, method=actuator.name)
        elif held:
            log.warning("drain held back; retried on the next run", reason=error, method=actuator.name)
        else:
            log.error(
                f"{action.name} failed; retried on the next run",
                error=error,
                seconds=elapsed,
                attempts=state.vm.attempts,
                method=actuator.name,
            )
            result.errors.append(error)
            result.exit_code = EXIT_ACTION_FAILED
        log_transitions(log, outcome.transitions)
        result.transitions.extend(outcome.transitions)
    return state


def _restore_gate_open(config: Config, log: Any, seams: Seams, state: State) -> bool:
    """The optional local health check before putting the VM back (see ``core.restore_gate``)."""
    if not config.restore.health_url and not config.restore.health_command:
        return True
    from drainer.health import healthy  # noqa: PLC0415

    go, why = restore_gate(state.vm, seams.now(), config.restore, healthy(config, log))
    if not go:
        log.info("restore waits for the local health check", reason=why)
    elif why:
        log.warning("restore gate timed out", reason=why)
    return go


def _approve(
    config: Config,
    *,
    log: Any,
    seams: Seams,
    store: StateStore,
    imds: ImdsClient,
    vm: InstanceInfo,
    state: State,
    result: RunResult,
) -> State:
    """Approve this VM's events early where the rule in ``core.decide_approvals`` allows it."""
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
    decision = decide_approvals(state, vm.name, now, cfg, facts)
    if decision.transitions and not config.dry_run:
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
    from drainer.actions import make_actuator  # noqa: PLC0415
    from drainer.ledger import StoreLedger  # noqa: PLC0415

    cached = store.meta("peer_check")
    if cached:
        try:
            data = json.loads(cached)
            fresh = time.time() - float(data["at"]) < config.approval.peer_check_interval
            if data["listed"] == sorted(listed) and fresh:
                return frozenset(data["in_rotation"]), frozenset(data["members"])
        except (ValueError, KeyError, TypeError):
            pass
    try:
        actuator = make_actuator(config, vm, log)
        peers = getattr(actuator, "peers", None)
        if peers is None:
            return None, None
        result: tuple[frozenset[str], frozenset[str]] = peers(vm, StoreLedger(store, _utcnow), listed)
    except DrainerError as exc:
        log.warning("could not read the other VMs' pool membership", error=str(exc))
        return None, None
    if not config.dry_run:
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


class _FailingActuator:
    """Stands in when the drain method cannot even be set up (e.g. no credential): every action
    fails with that error, is recorded, and is retried on the next run."""

    name = "unavailable"

    def __init__(self, error: DrainerError) -> None:
        self.error = error

    def drain(self, action: Drain, ctx: Any) -> None:
        raise self.error

    def restore(self, action: Any, ctx: Any) -> None:
        raise self.error


def load_state(config: Config) -> tuple[State, StateStore]:
    """Open the state for reading (status, history). Raises StateError."""
    store = StateStore(config.state_dir)
    return store.load(), store
