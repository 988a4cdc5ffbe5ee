"""The commit step: every decision and every action's outcome goes through ``Commit``, which saves it
(one transaction), logs its history lines, counts its metrics and sets the run's exit code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from drainer.base import metrics
from drainer.base.errors import EXIT_ACTION_FAILED, EXIT_OK
from drainer.base.typing import Logger
from drainer.decide.model import Decision, DrainState, EventRecord, State, Transition

if TYPE_CHECKING:
    from drainer.store.state import Retention, StateStore


class RunResult:
    """What one run did (mutable: filled in as the run goes)."""

    def __init__(self) -> None:
        self.exit_code = EXIT_OK
        self.transitions: list[Transition] = []
        self.errors: list[str] = []
        self.held_by: list[str] = []  # events holding the VM out after the run
        self.drain_state = ""  # after the run ("in_rotation", ...; "" when it stopped early)


def log_transitions(log: Logger, transitions: Sequence[Transition]) -> None:
    for t in transitions:
        if t.subject == "vm" and t.to_state.endswith(" failed"):
            continue  # the history's line of a failed attempt: the action's own error line says it

        fields: dict[str, Any] = {"from_state": t.from_state, "to_state": t.to_state}
        if t.event_id:
            fields["event_id"] = t.event_id
            fields["event_type"] = t.event_type
        log.info(f"{t.subject} transition", reason=t.reason, **fields)


class Commit:
    """Saves, logs and counts what a run decided and what its actions did."""

    def __init__(
        self, store: StateStore, log: Logger, result: RunResult, retention: Retention | None
    ) -> None:
        self.store = store
        self.log = log
        self.result = result
        self._retention = retention

    def __call__(
        self,
        old: State,
        decision: Decision,
        now: datetime,
        *,
        prune: bool = True,
        changed: bool | None = None,
        then: Callable[[State], None] | None = None,
    ) -> State:
        """Persist ``decision`` against ``old`` (nothing at all when it changes nothing: an idle run
        writes no transaction and no fsync), call ``then`` with the new state (an action's own log
        line and counts), and log the decision's transitions. ``prune``: a save that adds history
        lines also prunes old history and cleared events, in the same transaction. ``changed``: whether
        the decision changes anything, when the caller knows it more cheaply. Raises StateError."""
        if changed is None:
            changed = bool(decision.transitions) or decision.state != old
        if changed:
            retention = self._retention if prune and decision.transitions else None
            self.store.save(old, decision.state, decision.transitions, now, retention=retention)
        if then is not None:
            then(decision.state)
        log_transitions(self.log, decision.transitions)
        self.result.transitions.extend(decision.transitions)
        return decision.state

    def action(
        self, name: str, error: str | None, *, held: bool = False, seconds: float | None = None
    ) -> None:
        """Count one action's outcome; a failure (not a drain held back) fails the run."""
        label = "ok" if error is None else ("held" if held else "failed")
        metrics.current.inc("actions", {"action": name, "result": label})
        if seconds is not None:
            metrics.current.observe("action_duration", {"action": name}, seconds)
        if error is not None and not held:
            self.result.errors.append(error)
            self.result.exit_code = EXIT_ACTION_FAILED

    def problem(self, error: str) -> None:
        """Something the run could not do although its actions went on (a refused file, a record it
        could not sign): the run fails (exit 1) and ``status`` says why."""
        self.result.errors.append(error)
        self.result.exit_code = EXIT_ACTION_FAILED

    def events_seen(self, state: State, transitions: Sequence[Transition]) -> None:
        """Count the events seen for the first time (or again after they cleared)."""
        for t in transitions:
            if t.subject == "event" and t.from_state in {"new", "cleared"}:
                record = state.events.get(t.event_id.casefold())
                status = record.event.status.value if record else ""
                metrics.current.inc("events_seen", {"event_type": t.event_type, "event_status": status})

    @staticmethod
    def window(events: Sequence[EventRecord], state: State) -> None:
        """How long the VM was out of rotation for each event a restore ended."""
        for record in events:
            done = state.events.get(record.event.key, record)
            if done.left_rotation_at is not None and done.returned_at is not None:
                seconds = (done.returned_at - done.left_rotation_at).total_seconds()
                metrics.current.set("out_of_rotation", {"event_type": done.event.event_type.value}, seconds)

    def finish(self, state: State) -> None:
        """The drain state gauge, and what holds the VM out after the run."""
        if state.vm.drain_state in (DrainState.DRAINING, DrainState.DRAINED):
            self.result.held_by = [
                state.events[k].event.event_id for k in state.vm.held_by if k in state.events
            ]
        self.result.drain_state = state.vm.drain_state.value
        metrics.record_drain_state(state.vm.drain_state.value)
