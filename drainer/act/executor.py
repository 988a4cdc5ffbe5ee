"""The executor: every action a run carries out goes through ``Executor.run``, which looks its handler
up in one table keyed by the action's type (``HANDLERS``), and hands each outcome to the commit step.

The actions: the core's ``Drain``, ``Restore``, ``Reconcile`` and (from the approval rule) ``Approve``;
and the hook phases that belong to no built-in action: ``OnEvent`` (each new event) and
``RetryPhases`` (phases that failed on earlier runs). The drain methods and hooks are imported only
when an action needs them (the idle path stays light).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from drainer.act.actuator import ActionContext, Actuator
from drainer.act.commit import Commit
from drainer.act.effects import Effects
from drainer.act.seams import Seams
from drainer.base.errors import DrainerError, DrainHeldError
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.approval import record_approval, restore_gate
from drainer.decide.core import record_outcome, record_reconcile
from drainer.decide.model import Approve, Drain, EventRecord, Reconcile, Restore, State, Transition
from drainer.store.schema import StateCorruptError

if TYPE_CHECKING:
    from drainer.act.hooks import Hook, HookRunner, PendingPhases
    from drainer.base.instance import InstanceInfo
    from drainer.io.imds import ImdsClient
    from drainer.store.state import StateStore


class OnEvent(NamedTuple):
    """Run the on-event hooks for events seen for the first time (or again after they cleared)."""

    event_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return "on-event"


class RetryPhases(NamedTuple):
    """Run again the hook phases that failed on earlier runs (``pending``: as they were before this
    run's actions; a phase that fails during this run waits for the next one)."""

    pending: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return "retry-phases"


Step = Drain | Restore | Reconcile | Approve | OnEvent | RetryPhases


class Executor:
    """Carries out a run's actions, one at a time, each outcome committed before the next."""

    def __init__(
        self,
        config: Config,
        *,
        log: Logger,
        effects: Effects,
        seams: Seams,
        store: StateStore,
        commit: Commit,
        vm: InstanceInfo,
        imds: ImdsClient,
    ) -> None:
        self.config = config
        self.log = log
        self.effects = effects
        self.seams = seams
        self.store = store
        self.commit = commit
        self.vm = vm
        self.imds = imds
        self._actuator: Actuator | None = None
        self._hooks: tuple[HookRunner, PendingPhases] | None = None

    def run(self, state: State, actions: Sequence[Step]) -> State:
        for action in actions:
            state = HANDLERS[type(action)](self, state, action)
        return state

    # -- what the handlers share -------------------------------------------------------------------

    @property
    def hooks(self) -> tuple[HookRunner, PendingPhases]:
        if self._hooks is None:
            from drainer.act.hooks import HookRunner, PendingPhases  # noqa: PLC0415

            runner = HookRunner(
                self.config, self.log, os.environ, rehearsal=self.effects.rehearsal, note=self._note_hook
            )
            self._hooks = (runner, PendingPhases(self.store))
        return self._hooks

    @property
    def actuator(self) -> Actuator:
        """The drain method wrapped in its hook phases (``drainer.act.hooks.HookedActuator``)."""
        if self._actuator is None:
            from drainer.act.hooks import HookedActuator  # noqa: PLC0415
            from drainer.act.methods import make_actuator  # noqa: PLC0415

            try:
                plain = self.seams.actuator or make_actuator(self.config, self.vm, self.log, self.effects)
            except DrainerError as exc:
                plain = FailingActuator(exc)
            self._actuator = HookedActuator(plain, *self.hooks)
        return self._actuator

    def _note_hook(self, hook: Hook, outcome: str, detail: str) -> None:
        """Every hook run is a line of history (``drainer history`` shows what filled a gap)."""
        line = Transition(
            subject="hook", from_state=f"{hook.phase}/{hook.name}", to_state=outcome, reason=detail
        )
        self.store.append_history(self.seams.now(), [line])

    def context(self, events: tuple[EventRecord, ...], forced: str = "") -> ActionContext:
        from drainer.act.records import RecordGuard  # noqa: PLC0415
        from drainer.store.ledger import StoreAbsence, StoreIntentsSeen, StoreLedger, StoreNicIds  # noqa: PLC0415

        drain = self.config.drain
        return ActionContext(
            records=RecordGuard(self.effects.record_keys(self.config), self.vm, self.log, self.seams.now),
            config=self.config,
            vm=self.vm,
            events=events,
            log=self.log,
            ledger=StoreLedger(self.store, self.seams.now),
            absence=StoreAbsence(self.store, drain.gone_after_reads, drain.gone_after_seconds),
            checkpoint=self.seams.checkpoint,
            now=self.seams.now,
            forced=forced,
            nic_ids=StoreNicIds(self.store),
            seen=StoreIntentsSeen(self.store),
            spread=self.effects.spread,
        )


def _change(ex: Executor, state: State, action: Drain | Restore | Reconcile) -> State:
    """A drain, restore or reconcile through the drain method; its outcome through the core."""
    if isinstance(action, Restore) and not _restore_gate_open(ex, state):
        return state
    keys = [e.casefold() for e in action.event_ids] if isinstance(action, Drain) else list(state.vm.held_by)
    events = tuple(state.events[k] for k in keys if k in state.events)
    ctx = ex.context(events, "" if isinstance(action, Restore) else action.forced)
    actuator = ex.actuator
    if _spreads(ex.config, action) and ex.config.fleet.spread_seconds > 0:
        ex.log.info(
            f"{action.name}: waiting a random moment before the ARM writes ([fleet] spread_seconds)",
            up_to_seconds=ex.config.fleet.spread_seconds,
        )
        ex.effects.spread(ex.config.fleet.spread_seconds)
    ex.seams.checkpoint(f"before-{action.name}")
    started = time.monotonic()
    error: str | None = None
    held = False
    found = ""
    changed = False
    try:
        if isinstance(action, Drain):
            actuator.drain(action, ctx)
        elif isinstance(action, Restore):
            actuator.restore(action, ctx)
        else:
            changed, found = actuator.reconcile(action.out, ctx)
    except DrainHeldError as exc:
        error, held = exc.reason, True
    except StateCorruptError:
        raise  # the run starts over on a rebuilt state (drainer.app.runner), not a failed action
    except DrainerError as exc:
        error = str(exc)
    elapsed = round(time.monotonic() - started, 3)
    ex.seams.checkpoint(f"after-{action.name}")
    now = ex.seams.now()
    if isinstance(action, Reconcile):
        outcome = record_reconcile(state, action, found, error, now, changed=changed)
    else:
        outcome = record_outcome(state, action, error, now, held=held)
    method = actuator.name

    def said(after: State) -> None:
        if ctx.notes:
            ex.store.set_floor_breach(now, ctx.notes)
        if ctx.records.checked:  # the action read its NICs' records: what it found stands for status
            ex.store.set_record_problems(now, ctx.records.problems)
        for problem in ctx.records.errors:  # e.g. a record kept locally: its key could not be used
            ex.commit.problem(problem)
        ex.seams.checkpoint(f"recorded-{action.name}")
        ex.commit.action(action.name, error, held=held, seconds=elapsed)
        if error is None and isinstance(action, Restore):
            ex.commit.window(events, after)
        if error is None and isinstance(action, Reconcile):
            ex.log.info("reconciled", reason=action.reason, found=found, out=action.out, seconds=elapsed)
        elif error is None:
            ex.log.info(f"{action.name} succeeded", seconds=elapsed, method=method)
        elif held:
            ex.log.warning("drain held back; retried on the next run", reason=error, method=method)
        else:
            ex.log.error(
                f"{action.name} failed; retried on the next run",
                error=error,
                seconds=elapsed,
                attempts=after.vm.attempts,
                method=method,
            )

    return ex.commit(state, outcome, now, then=said)


def _approve(ex: Executor, state: State, action: Approve) -> State:
    """POST StartRequests for these events and record the answer (a dry run records nothing)."""
    ex.seams.checkpoint("before-approve")
    error: str | None = None
    try:
        sent = ex.effects.approve(ex.imds, action.event_ids, ex.log)
    except DrainerError as exc:
        error, sent = str(exc), True
    if not sent:
        return state
    ex.seams.checkpoint("after-approve")
    now = ex.seams.now()

    def said(_: State) -> None:
        ex.commit.action("approve", error)
        if error is None:
            ex.log.info("approved early", event_ids=list(action.event_ids))
        else:
            ex.log.error("approval failed; retried on the next run", error=error)

    return ex.commit(state, record_approval(state, action, error, now), now, prune=False, then=said)


def _on_event(ex: Executor, state: State, action: OnEvent) -> State:
    runner, pending = ex.hooks
    for event_id in action.event_ids:
        record = state.events.get(event_id.casefold())
        if record is not None and not runner.run_phase("on-event", vm=ex.vm, events=[record]).ok:
            pending.add("on-event", [event_id], "any")
    return state


def _retry_phases(ex: Executor, state: State, action: RetryPhases) -> State:
    from drainer.act.hooks import retry_pending  # noqa: PLC0415

    earlier = ex.effects.retry_phases(list(action.pending))
    if not earlier:
        return state
    keys = {str(i).casefold() for item in earlier for i in item.get("event_ids", [])}
    missing = [k for k in keys if k not in state.events]
    if missing:  # cleared events the failed phases name
        state = state._replace(events={**state.events, **ex.store.records(missing)})
    runner, pending = ex.hooks
    retry_pending(
        runner,
        pending,
        vm=ex.vm,
        drain_state=state.vm.drain_state.value,
        events=state.events,
        earlier=earlier,
    )
    return state


HANDLERS: Mapping[type, Callable[[Executor, State, Any], State]] = {
    Drain: _change,
    Restore: _change,
    Reconcile: _change,
    Approve: _approve,
    OnEvent: _on_event,
    RetryPhases: _retry_phases,
}


def _spreads(config: Config, action: Drain | Restore | Reconcile) -> bool:
    """Drains the platform does not force, and restores, wait a random moment first (the fleet's
    VMs learn of an event in the same second: their ARM writes should not land in it too)."""
    if config.drain.method not in ("nic", "admin-state"):
        return False
    if isinstance(action, Drain):
        # An operator's `drainer drain` (no event) is one VM by hand: it does not wait.
        manual = not action.event_ids
        return not manual and not action.forced and not ({"Preempt", "Terminate"} & set(action.event_types))
    return isinstance(action, Restore)


def _restore_gate_open(ex: Executor, state: State) -> bool:
    """The optional local health check before putting the VM back (``decide.approval.restore_gate``)."""
    restore = ex.config.restore
    if not restore.health_url and not restore.health_command:
        return True
    from drainer.act.health import healthy  # noqa: PLC0415

    go, why = restore_gate(state.vm, ex.seams.now(), restore, healthy(ex.config, ex.log))
    if not go:
        ex.log.info("restore waits for the local health check", reason=why)
    elif why:
        ex.log.warning("restore gate timed out", reason=why)
    return go


class FailingActuator:
    """Stands in when the drain method cannot even be set up (e.g. no credential): every action
    fails with that error, is recorded, and is retried on the next run."""

    name = "unavailable"

    def __init__(self, error: DrainerError) -> None:
        self.error = error

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        raise self.error

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        raise self.error

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        raise self.error

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        raise self.error
