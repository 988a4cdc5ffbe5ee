"""One run of the agent, shared by ``check`` and the daemon: observe -> decide -> act -> commit.

- observe: this VM's identity (``drainer.app.identity``) and the Scheduled Events document (other
  VMs' events listed unchanged are set aside first: ``drainer.decide.inert``);
- decide: the pure core (``drainer.decide.core.step``), then early approval's rule once its facts
  are gathered (``drainer.act.approve``);
- act: every action through the executor's table (``drainer.act.executor``);
- commit: every decision and outcome through one commit step (``drainer.act.commit``).

Every side effect goes through the effects seam chosen once per run (``drainer.act.effects``): a
dry run takes no lock, works on an in-memory copy of the state and writes nothing.

Each step boundary is a crash point (``Seams.checkpoint``). Intents (``draining``/``restoring``) are
persisted before the action, outcomes after it, and every action is idempotent: a run killed anywhere
leaves a state the next run completes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from drainer.act.commit import Commit, RunResult
from drainer.act.effects import Effects, Resident, effects_for
from drainer.act.health import recovery_gate
from drainer.act.probe import drift
from drainer.act.seams import BOOT_ID_PATH, Seams
from drainer.app import identity
from drainer.base import metrics
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.approval import approval_candidates, approve_at_once, at_once_candidates, decide_approvals
from drainer.decide.core import Observation, State, own_events, set_manual, step
from drainer.decide.inert import split_remembered
from drainer.io.imds import ImdsClient
from drainer.store.state import Retention, StateCorruptError, StateStore

if TYPE_CHECKING:
    from drainer.act.executor import Executor

__all__ = ["BOOT_ID_PATH", "RunResult", "Seams", "run_once"]


class Run(NamedTuple):
    """What every step of one run works with."""

    config: Config
    log: Logger
    seams: Seams
    effects: Effects
    store: StateStore
    imds: ImdsClient
    commit: Commit


def run_once(
    config: Config,
    log: Logger,
    seams: Seams | None = None,
    *,
    manual: bool | None = None,
    imds: ImdsClient | None = None,
    stall_seconds: float = 0.0,
    resident: Resident | None = None,
) -> RunResult:
    """One complete run. Raises DrainerError subclasses for failures that stop the run early.

    ``manual``: an operator's ``drainer drain`` (True) or ``drainer restore`` (False) before deciding.
    ``imds``: a client kept across runs (the daemon: keep-alive and ETag); else one for this run.
    ``stall_seconds``: how long the daemon saw no poll beyond its interval (a stall of the VM).
    ``resident``: the lock and the state database kept open between the daemon's runs.
    """
    seams = seams or Seams()
    effects = effects_for(config, seams, resident)
    log = effects.log(log)
    result = RunResult()
    with effects.lock(config.state_dir):
        client = imds or ImdsClient(config.imds)
        try:
            # A second pass only after setting a state aside: another VM's, or a damaged one.
            for attempt in range(2):
                store, state, note = effects.open_store(config.state_dir)
                try:
                    if note:
                        log.error(note)
                    run = Run(
                        config,
                        log,
                        seams,
                        effects,
                        store,
                        client,
                        Commit(store, log, result, Retention.of(config)),
                    )
                    try:
                        again = _run(run, state, manual=manual, stall_seconds=stall_seconds)
                    except StateCorruptError as exc:
                        # Found damaged mid-run (a malformed page the open did not touch).
                        if attempt or not effects.set_aside(store, "corrupt"):
                            raise
                        log.error(
                            "the state database is damaged: moved aside; starting over on a new one, "
                            "reconciled with Azure",
                            error=str(exc),
                        )
                        again = True
                finally:
                    effects.close_store(store)
                if not again:
                    break
        finally:
            if imds is None:
                client.close()
    metrics.current.set("last_check", {}, time.time())
    return result


def _run(run: Run, state: State, *, manual: bool | None, stall_seconds: float) -> bool:
    """Observe, decide, act, commit. True when the run must start over (another VM's state was set
    aside)."""
    config, log, seams, store = run.config, run.log, run.seams, run.store
    boot_id = read_boot_id(seams.boot_id_path)
    found = identity.identify(run.store, run.imds, run.effects, log, boot_id=boot_id)
    if not isinstance(found, InstanceInfo):
        return found  # another VM's state: set aside (start over), or left alone in a dry run
    vm = identity.with_override(config, found)
    # -- observe
    document = run.imds.scheduled_events()
    for warning in document.warnings:
        log.warning(
            "scheduled event not taken at face value",
            event_id=warning.event_id,
            reason=warning.reason,
            ignored=warning.ignored,
        )
    # Other VMs' events listed unchanged are set aside (drainer.decide.inert): they are all in the state.
    view = split_remembered(document, state, vm.name)
    # Only the open events were loaded: an event listed again after it cleared is looked up by key.
    missing = sorted(set((view.document if view else document).keys_of()).difference(state.events))
    if missing:
        state = state._replace(events={**state.events, **store.records(missing)})
    if manual is not None:
        state = run.commit(state, set_manual(state, manual, seams.now()), seams.now(), prune=False)
    # -- decide
    now = seams.now()
    view = split_remembered(document, state, vm.name)  # the same one unless the state changed above
    core_state, core_document = (view.state, view.document) if view else (state, document)
    observation = Observation(
        document=core_document,
        vm_name=vm.name,
        boot_id=boot_id,
        fresh=store.fresh,
        drift=drift(config, core_state),
        monotonic=time.monotonic(),
        gate_ok=recovery_gate(config, log, core_state),
        stall_seconds=stall_seconds,
    )
    decision = step(core_state, observation, now, config.policy)
    # Worked out before the merge below: comparing a thousand set-aside records would cost the daemon.
    changed = bool(decision.transitions) or decision.state != core_state
    if view:
        decision = view.merge(decision)
    log.debug(
        "scheduled events",
        incarnation=document.incarnation,
        events=len(document.events),
        actions=[a.name for a in decision.actions],
    )
    if any(a.name == "drain" for a in decision.actions) and not store.fresh:
        # Before every drain: make sure the cached identity (verified in this boot) is still this
        # VM's; IMDS failing leaves it standing, only a different answer stops the drain.
        current = identity.recheck(run.imds, found, boot_id, log)
        if not identity.same_vm(found, current):
            return identity.other_vm(run.store, run.effects, log, found, current)
    seams.checkpoint("decided")
    # -- commit the decision, then act
    state = run.commit(state, decision, now, changed=changed)
    seams.checkpoint("saved")
    run.commit.events_seen(state, decision.transitions)
    # Hook phases that failed on earlier runs are retried after this run's actions; a phase that
    # fails during this run waits for the next one.
    earlier = store.pending_phases()
    new = tuple(
        t.event_id
        for t in decision.transitions
        if t.subject == "event" and t.from_state in {"new", "cleared"}
    )
    on_event = bool(new) and (Path(config.hooks.dir) / "on-event").is_dir()
    if on_event or decision.actions or earlier or _approving(config, state, decision.own):
        # Not on the idle path: the executor (and through it the drain methods' seam).
        from drainer.act.executor import Executor, OnEvent, RetryPhases  # noqa: PLC0415

        executor = Executor(
            config,
            log=log,
            effects=run.effects,
            seams=seams,
            store=store,
            commit=run.commit,
            vm=vm,
            imds=run.imds,
        )
        state = executor.run(state, [*([OnEvent(new)] if on_event else []), *decision.actions])
        if earlier:
            # Before approval: a drain is complete only once its post-drain hooks succeeded.
            state = executor.run(state, [RetryPhases(tuple(earlier))])
        # -- early approval: a rule over facts, then Approve actions through the same executor
        if _approving(config, state, decision.own):
            state = _approve(run, executor, vm, state)
    run.commit.finish(state)
    if not run.commit.result.errors:  # "the last successful check": only a run whose actions all went
        try:
            run.effects.touch_last_check(config.state_dir)
        except OSError as exc:  # a symlink planted there (refused), a full disk: say so, fail the run
            log.error("cannot record the successful check", error=str(exc))
            run.commit.problem(f"{Path(config.state_dir) / 'last-check'}: {exc.strerror or exc}")
    return False


def _approving(config: Config, state: State, own: tuple[str, ...] | None) -> bool:
    """Whether one of this VM's events (``own``: their keys) may be approved early now."""
    if not config.approval.enabled:
        return False
    mine = own_events(state, own)  # only this VM's events can be approved
    return bool(approval_candidates(mine) or at_once_candidates(mine, config.approval))


def _approve(run: Run, executor: Executor, vm: InstanceInfo, state: State) -> State:
    from drainer.act.approve import approval_facts  # noqa: PLC0415 - only while an event can be approved

    cfg = run.config.approval
    facts = approval_facts(
        run.config, log=run.log, effects=run.effects, store=run.store, vm=vm, state=state, now=run.seams.now()
    )
    now = run.seams.now()  # the reads took time: NotBefore may be near now
    decision = approve_at_once(decide_approvals(state, vm.name, now, cfg, facts), cfg, facts, now)
    state = run.commit(state, decision, now, prune=False)
    return executor.run(state, decision.actions)


def read_boot_id(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None  # not Linux, or no procfs: reboots are then not detected
