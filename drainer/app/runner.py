"""One run of the agent: observe IMDS, decide, persist, act, record. Shared by ``check`` and the
daemon.

Order of a run (each step is a crash point; see ``Seams.checkpoint``):
lock → load state → identify VM → GET scheduled events → decide → save (intents first) → for each
action: act → save outcome. A run killed anywhere leaves a state the next run completes: intents
(``draining``/``restoring``) are persisted before the action, outcomes after it, and every action is
idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drainer.act.commit import log_transitions
from drainer.act.seams import BOOT_ID_PATH, Seams
from drainer.app import identity
from drainer.base import metrics
from drainer.base.errors import EXIT_ACTION_FAILED, EXIT_OK, DrainerError, DrainHeldError
from drainer.config import Config
from drainer.decide.approval import approval_candidates, at_once_candidates, restore_gate
from drainer.decide.core import (
    Action,
    Decision,
    Drain,
    DrainState,
    EventRecord,
    Observation,
    Reconcile,
    Restore,
    State,
    Transition,
    own_events,
    record_outcome,
    record_reconcile,
    set_manual,
    step,
)
from drainer.decide.inert import split_remembered
from drainer.io.imds import ImdsClient, InstanceInfo
from drainer.io.lock import RunLock
from drainer.store.stamp import touch_last_check
from drainer.store.state import Retention, StateStore, open_store, set_aside

if TYPE_CHECKING:
    from drainer.act.actuator import Actuator

__all__ = ["BOOT_ID_PATH", "Seams", "run_once"]


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


class _DryRunLog:
    """A dry run's log: every line says what would happen, none claims that it happened."""

    _WOULD = (
        ("succeeded", "would succeed"),
        ("removed NIC from pools", "would remove NIC from pools"),
        ("returned NIC to pools", "would return NIC to pools"),
        ("set admin state", "would set admin state"),
        ("transition", "transition (not saved)"),
        ("reconciled", "would reconcile"),
    )

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def _say(self, text: str) -> str:
        for done, would in self._WOULD:
            text = text.replace(done, would)
        return text

    def __getattr__(self, level: str) -> Callable[..., Any]:
        method = getattr(self._inner, level)

        def emit(event: str, *args: Any, **fields: Any) -> Any:
            event = event if event.startswith("dry-run") else f"dry-run: {self._say(event)}"
            said = {k: self._say(v) if isinstance(v, str) else v for k, v in fields.items()}
            return method(event, *args, **said)

        return emit


def run_once(
    config: Config,
    log: Any,
    seams: Seams | None = None,
    *,
    manual: bool | None = None,
    imds: ImdsClient | None = None,
    stall_seconds: float = 0.0,
) -> RunResult:
    """One complete run. Raises DrainerError subclasses for failures that stop the run early.

    ``manual``: an operator's ``drainer drain`` (True) or ``drainer restore`` (False) before deciding.
    ``imds``: a client kept across runs (the daemon: keep-alive and ETag); else one for this run.
    ``stall_seconds``: how long the daemon saw no poll beyond its interval (a stall of the VM).
    A dry run takes no lock and works on an in-memory copy of the state: it writes nothing at all.
    """
    seams = seams or Seams()
    result = RunResult()
    if config.dry_run:
        log = _DryRunLog(log)
    lock = contextlib.nullcontext() if config.dry_run else RunLock(config.state_dir)
    with lock:
        client = imds or ImdsClient(config.imds)
        try:
            for _ in range(2):  # a second pass only after discarding another VM's state
                store, state, note = open_store(config.state_dir, dry_run=config.dry_run)
                try:
                    if note:
                        log.error(note)
                    again = _run_locked(
                        config,
                        log=log,
                        seams=seams,
                        store=store,
                        state=state,
                        imds=client,
                        result=result,
                        manual=manual,
                        stall_seconds=stall_seconds,
                    )
                finally:
                    store.close()
                if not again:
                    break
        finally:
            if imds is None:
                client.close()
    metrics.current.set("last_check", {}, time.time())
    return result


def _identify(
    config: Config, log: Any, store: StateStore, imds: ImdsClient, *, boot_id: str | None, fresh: bool
) -> InstanceInfo | None:
    """This VM's identity; None when the state belongs to another VM (then moved aside).

    Read from IMDS when the state is new or the VM booted since the last run; else the cached one.
    Raises ImdsError, MalformedDocumentError.
    """
    known = identity.cached(store)
    if known is not None and not fresh and boot_id == store.meta("boot_id"):
        return known
    current = identity.read(imds)
    if known is None and not fresh and store.holds_anything():
        # A state that never said whose it is: it cannot be shown to be this VM's, so it is never
        # acted on (the records on the NICs are the truth; the next pass reconciles with them).
        _discard_other_vm(config, log, store, InstanceInfo(name="(unknown)"), current)
        return None
    if known is not None and not identity.same_vm(known, current):
        _discard_other_vm(config, log, store, known, current)
        return None
    if known != current:
        identity.remember(store, current)
    return current


def _discard_other_vm(
    config: Config, log: Any, store: StateStore, known: InstanceInfo, current: InstanceInfo
) -> None:
    log.error(
        "the state directory belongs to another VM: its records are set aside and never acted on",
        state_vm=known.name,
        state_vm_id=known.vm_id,
        vm=current.name,
        vm_id=current.vm_id,
    )
    if not config.dry_run:
        store.close()
        set_aside(Path(config.state_dir), f"other-vm-{known.name}")


def _run_locked(
    config: Config,
    *,
    log: Any,
    seams: Seams,
    store: StateStore,
    state: State,
    imds: ImdsClient,
    result: RunResult,
    manual: bool | None,
    stall_seconds: float = 0.0,
) -> bool:
    """Observe, decide, act, record. True when the run must start over (another VM's state was
    discarded)."""
    boot_id = read_boot_id(seams.boot_id_path)
    found = _identify(config, log, store, imds, boot_id=boot_id, fresh=store.fresh)
    if found is None:
        return not config.dry_run
    vm = identity.with_override(config, found)
    document = imds.scheduled_events()
    # Other VMs' events listed unchanged are set aside (drainer.decide.inert): they are all in the state.
    view = split_remembered(document, state, vm.name)
    # Only the open events were loaded: an event listed again after it cleared is looked up by key.
    missing = sorted(set((view.document if view else document).keys_of()).difference(state.events))
    if missing:
        state = state._replace(events={**state.events, **store.records(missing)})
    if manual is not None:
        by_hand = set_manual(state, manual, seams.now())
        _record(log, store, state, by_hand, seams.now(), result=result)
        state = by_hand.state
    for warning in document.warnings:
        log.warning(
            "scheduled event not taken at face value",
            event_id=warning.event_id,
            reason=warning.reason,
            ignored=warning.ignored,
        )
    now = seams.now()
    view = split_remembered(document, state, vm.name)  # the same one unless the state changed above
    core_state, core_document = (view.state, view.document) if view else (state, document)
    observation = Observation(
        document=core_document,
        vm_name=vm.name,
        boot_id=boot_id,
        fresh=store.fresh,
        drift=_drift(config, core_state),
        monotonic=time.monotonic(),
        gate_ok=_recovery_gate(config, log, core_state),
        stall_seconds=stall_seconds,
    )
    decision = step(core_state, observation, now, config.policy)
    changed = bool(decision.transitions) or decision.state != core_state
    if view:
        decision = view.merge(decision)
    log.debug(
        "scheduled events",
        incarnation=document.incarnation,
        events=len(document.events),
        actions=[a.name for a in decision.actions],
    )
    if any(isinstance(a, Drain) for a in decision.actions) and not store.fresh:
        # Before every drain: make sure the cached identity is still this VM's.
        current = identity.read(imds)
        if not identity.same_vm(found, current):
            _discard_other_vm(config, log, store, found, current)
            return not config.dry_run
    seams.checkpoint("decided")
    # An idle run changes nothing: skip the transaction (and its fsync) entirely. A run that writes
    # anyway prunes the history and the cleared events in the same transaction.
    if changed:
        store.save(state, decision.state, decision.transitions, now, retention=_retention(config, decision))
    if not config.dry_run:
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
    if decision.actions:
        state = _act(
            config,
            log=log,
            seams=seams,
            store=store,
            vm=vm,
            state=state,
            actions=decision.actions,
            result=result,
        )
    # Only this VM's events can be approved: other VMs' (possibly a thousand) are left out of the scan.
    own = own_events(state, decision.own)
    if config.approval.enabled and (approval_candidates(own) or at_once_candidates(own, config.approval)):
        from drainer.act.approve import approve  # noqa: PLC0415 - only while an event can be approved

        state = approve(
            config, log=log, seams=seams, store=store, imds=imds, vm=vm, state=state, result=result
        )
    if state.vm.drain_state in (DrainState.DRAINING, DrainState.DRAINED):
        result.held_by = [state.events[k].event.event_id for k in state.vm.held_by if k in state.events]
    if earlier_failures not in (None, "", "[]"):
        state = _with_records(store, state, earlier_failures)
        _retry_failed_hooks(config, log, store=store, vm=vm, state=state, earlier=earlier_failures)
    metrics.record_drain_state(state.vm.drain_state.value)
    return False


def _recovery_gate(config: Config, log: Any, state: State) -> bool | None:
    """The restore gate's answer for restore_when = "recovered": True without a gate; asked only while an
    event under that rule is Started and holds the VM (None: not asked)."""
    if not config.restore.health_url and not config.restore.health_command:
        return True
    if "recovered" not in config.policy.restore_when.values():
        return None
    from drainer.decide.recovery import needs_gate  # noqa: PLC0415

    if not needs_gate(state.events, config.policy):
        return None
    from drainer.act.health import healthy  # noqa: PLC0415

    return healthy(config, log)


def _retention(config: Config, decision: Decision) -> Retention | None:
    """What to prune in a save that adds history lines (None: a save without any prunes nothing)."""
    if not decision.transitions:
        return None
    return Retention(
        cleared_days=config.policy.retention_days,
        cleared_events=config.retention.cleared_events,
        history_days=config.retention.history_days,
        history_rows=config.retention.history_rows,
    )


def _with_records(store: StateStore, state: State, pending: str | None) -> State:
    """The state with the (possibly cleared) events that failed hook phases name, looked up by key."""
    import json  # noqa: PLC0415 - only with failed hooks to retry

    try:
        items = json.loads(pending or "[]")
        keys = {str(i).casefold() for item in items for i in item.get("event_ids", [])}
    except (ValueError, TypeError, AttributeError):
        return state
    missing = [k for k in keys if k not in state.events]
    if not missing:
        return state
    return state._replace(events={**state.events, **store.records(missing)})


def _drift(config: Config, state: State) -> str:
    """Whether what is on this VM disagrees with the state (one stat, for the probe method)."""
    if config.drain.method != "probe":
        return ""
    out = state.vm.drain_state in (DrainState.DRAINED, DrainState.RESTORING)
    if Path(config.probe.flag_file).exists() != out:
        return "the out-of-rotation flag does not match the state"
    return ""


def _record(
    log: Any, store: StateStore, old: State, decision: Decision, now: datetime, *, result: RunResult
) -> None:
    """Persist a decision's state and transitions, log them and add them to the run's result."""
    if decision.transitions or decision.state != old:
        store.save(old, decision.state, decision.transitions, now)
    log_transitions(log, decision.transitions)
    result.transitions.extend(decision.transitions)


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
    from drainer.act.hooks import HookRunner, PendingPhases  # noqa: PLC0415 - only when there are hooks to run

    runner = HookRunner(config, log, os.environ)
    pending = PendingPhases(store)
    for event_id in new:
        record = state.events.get(event_id.casefold())
        if record is not None and not runner.run_phase("on-event", vm=vm, events=[record]).ok:
            pending.add("on-event", [event_id], "any")


def _retry_failed_hooks(
    config: Config, log: Any, *, store: StateStore, vm: InstanceInfo, state: State, earlier: str | None
) -> None:
    if config.dry_run:
        return
    from drainer.act.hooks import HookRunner, PendingPhases, retry_pending  # noqa: PLC0415

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
    actions: Sequence[Action],
    result: RunResult,
) -> State:
    """Carry out the decided actions (drains and restores with their hooks; reconciles without) and
    record each outcome through the core."""
    # Not on the idle path: the actions (and, for the load-balancer methods, the Azure SDK).
    from drainer.act.actuator import ActionContext  # noqa: PLC0415
    from drainer.act.hooks import HookedActuator, HookRunner, PendingPhases  # noqa: PLC0415
    from drainer.act.methods import make_actuator  # noqa: PLC0415
    from drainer.store.ledger import StoreAbsence, StoreLedger  # noqa: PLC0415

    try:
        plain: Actuator = seams.actuator or make_actuator(config, vm, log)
    except DrainerError as exc:
        plain = _FailingActuator(exc)
    hooked = HookedActuator(plain, HookRunner(config, log, os.environ), PendingPhases(store))
    ledger = StoreLedger(store, seams.now)
    absence = StoreAbsence(store, config.drain.gone_after_reads, config.drain.gone_after_seconds)
    verb = "would succeed (dry-run)" if config.dry_run else "succeeded"
    for action in actions:
        if isinstance(action, Restore) and not _restore_gate_open(config, log, seams, state):
            continue
        if isinstance(action, Drain):
            keys = [e.casefold() for e in action.event_ids]
        else:
            keys = list(state.vm.held_by)
        events = tuple(state.events[k] for k in keys if k in state.events)
        ctx = ActionContext(
            config=config,
            vm=vm,
            events=events,
            log=log,
            ledger=ledger,
            absence=absence,
            checkpoint=seams.checkpoint,
            now=seams.now,
            forced=action.forced if isinstance(action, (Drain, Reconcile)) else "",
        )
        if _spread_applies(config, action):
            seams.spread(config.fleet.spread_seconds)
        seams.checkpoint(f"before-{action.name}")
        started = time.monotonic()
        error: str | None = None
        held = False
        found = ""
        changed = False
        try:
            if isinstance(action, Drain):
                hooked.drain(action, ctx)
            elif isinstance(action, Restore):
                hooked.restore(action, ctx)
            elif isinstance(action, Reconcile):
                changed, found = plain.reconcile(action.out, ctx)
        except DrainHeldError as exc:
            error, held = exc.reason, True
        except DrainerError as exc:
            error = str(exc)
        elapsed = round(time.monotonic() - started, 3)
        seams.checkpoint(f"after-{action.name}")
        if isinstance(action, Reconcile):
            outcome = record_reconcile(state, action, found, error, seams.now(), changed=changed)
        elif isinstance(action, (Drain, Restore)):
            outcome = record_outcome(state, action, error, seams.now(), held=held)
        else:
            continue
        store.save(
            state, outcome.state, outcome.transitions, seams.now(), retention=_retention(config, outcome)
        )
        if ctx.notes:
            store.set_meta({"floor_breach": json.dumps({"at": seams.now().isoformat(), "what": ctx.notes})})
        seams.checkpoint(f"recorded-{action.name}")
        state = outcome.state
        label = "ok" if error is None else ("held" if held else "failed")
        metrics.current.inc("actions", {"action": action.name, "result": label})
        metrics.current.observe("action_duration", {"action": action.name}, elapsed)
        if error is None and isinstance(action, Restore):
            _observe_window(events, outcome.state)
        if error is None and isinstance(action, Reconcile):
            log.info("reconciled", reason=action.reason, found=found, out=action.out, seconds=elapsed)
        elif error is None:
            log.info(f"{action.name} {verb}", seconds=elapsed, method=plain.name)
        elif held:
            log.warning("drain held back; retried on the next run", reason=error, method=plain.name)
        else:
            log.error(
                f"{action.name} failed; retried on the next run",
                error=error,
                seconds=elapsed,
                attempts=state.vm.attempts,
                method=plain.name,
            )
            result.errors.append(error)
            result.exit_code = EXIT_ACTION_FAILED
        log_transitions(log, outcome.transitions)
        result.transitions.extend(outcome.transitions)
    return state


def _spread_applies(config: Config, action: Action) -> bool:
    """Drains the platform does not force, and restores, wait a random moment first (the fleet's
    VMs learn of an event in the same second: their ARM writes should not land in it too)."""
    if config.dry_run or config.drain.method not in ("nic", "admin-state"):
        return False
    if isinstance(action, Drain):
        return not action.forced and not ({"Preempt", "Terminate"} & set(action.event_types))
    return isinstance(action, Restore)


def _observe_window(events: Sequence[EventRecord], state: State) -> None:
    for record in events:
        done = state.events.get(record.event.key, record)
        if done.left_rotation_at is not None and done.returned_at is not None:
            seconds = (done.returned_at - done.left_rotation_at).total_seconds()
            metrics.current.set("out_of_rotation", {"event_type": done.event.event_type.value}, seconds)


def _restore_gate_open(config: Config, log: Any, seams: Seams, state: State) -> bool:
    """The optional local health check before putting the VM back (see ``decide_approval.restore_gate``)."""
    if not config.restore.health_url and not config.restore.health_command:
        return True
    from drainer.act.health import healthy  # noqa: PLC0415

    go, why = restore_gate(state.vm, seams.now(), config.restore, healthy(config, log))
    if not go:
        log.info("restore waits for the local health check", reason=why)
    elif why:
        log.warning("restore gate timed out", reason=why)
    return go


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

    def reconcile(self, out: bool, ctx: Any) -> tuple[bool, str]:
        raise self.error


def load_state(config: Config) -> tuple[State, StateStore]:
    """Open the state for reading (status, history). Raises StateError."""
    store = StateStore(config.state_dir)
    return store.load(), store
