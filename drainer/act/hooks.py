"""Operator hooks: executables in phase directories, run around drainer's own actions.

Phases and the fixed place of the built-in actions (``PIPELINES``)::

    drain:    the fleet's floor -> pre-drain hooks  -> built-in drain (load balancer)  -> post-drain hooks
    restore:  pre-restore hooks -> built-in restore (load balancer) -> post-restore hooks
    event:    on-event hooks (each new event seen; informational)

Each phase is ``<hooks dir>/<phase>/``; its executables run in sorted order. Non-executables, editor
backups and hidden files are skipped with a warning; a hook is refused unless every component of its
path, symlink targets included, passes ``drainer.io.trust`` (OpenSSH's StrictModes rules: owned by root or
drainer's user, not writable by group or others; the hooks dir and phase dirs not even when sticky).
A hook is checked again right before it runs, and what runs is the file that was checked (its open
descriptor, through /proc/self/fd on Linux).

Failure policy: a failing ``pre-drain`` hook aborts the drain (``on_failure = "abort"``, the default;
the drain is retried on the next run) or is logged and passed over (``"continue"``). A failure in any
other phase never stops drainer's own action (a failing ``pre-restore`` must not keep the VM out of its
pools): it is logged and that phase is run again on the next run, until it succeeds or no longer
applies.

The contract (environment and JSON on stdin) is documented in the README; ``contract`` builds it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from drainer import __version__
from drainer.base import metrics
from drainer.base.errors import ActionError
from drainer.base.events import format_iso
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.core import Drain, EventRecord, Restore
from drainer.io import process
from drainer.io.trust import TrustError, check, open_file

if TYPE_CHECKING:
    from drainer.act.actuator import ActionContext, Actuator
    from drainer.store.state import StateStore

PHASES = ("on-event", "pre-drain", "post-drain", "pre-restore", "post-restore")
PIPELINES: Mapping[str, tuple[str, ...]] = {
    "drain": ("builtin:admit", "hooks:pre-drain", "builtin:drain", "hooks:post-drain"),
    "restore": ("hooks:pre-restore", "builtin:restore", "hooks:post-restore"),
    "event": ("hooks:on-event",),
}
# Inherited from drainer's own environment; everything else is dropped, and DRAINER_* always comes
# from the contract.
ALLOWED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")
ALLOWED_ENV_WINDOWS = (
    "SYSTEMROOT",
    "SYSTEMDRIVE",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "TEMP",
    "TMP",
    "PROGRAMDATA",
    "PROGRAMFILES",
    "USERPROFILE",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BACKUP_SUFFIXES = (
    "~",
    ".bak",
    ".orig",
    ".swp",
    ".swo",
    ".tmp",
    ".old",
    ".disabled",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-dist",
    ".rpmnew",
    ".rpmsave",
)
_WINDOWS_INTERPRETERS = {
    ".ps1": ("powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"),
    ".cmd": ("cmd.exe", "/d", "/c"),
    ".bat": ("cmd.exe", "/d", "/c"),
}


class Hook(NamedTuple):
    phase: str
    name: str
    path: Path
    argv: tuple[str, ...]
    timeout: float


class Skipped(NamedTuple):
    phase: str
    name: str
    reason: str
    refused: bool  # a permission problem (an error), not just a file that is not a hook


class PhaseResult(NamedTuple):
    phase: str
    ran: int
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def _argv(path: Path) -> tuple[str, ...] | None:
    """How to run ``path``, or None when it is not a hook on this platform."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        suffix = path.suffix.lower()
        if suffix in _WINDOWS_INTERPRETERS:
            return (*_WINDOWS_INTERPRETERS[suffix], str(path))
        return (str(path),) if suffix == ".exe" else None
    return (str(path),) if os.access(path, os.X_OK) else None


def discover(config: Config, phase: str) -> tuple[list[Hook], list[Skipped]]:
    """The hooks of ``phase`` in run order, and what was skipped or refused with the reason."""
    hooks_cfg = config.hooks
    base = Path(hooks_cfg.dir)
    directory = base / phase
    if not directory.is_dir():
        return [], []
    for parent in (base, directory):
        try:
            check(str(parent), strict_leaf=True)
        except TrustError as exc:
            return [], [Skipped(phase, "*", f"refused: {exc}", refused=True)]
    hooks: list[Hook] = []
    skipped: list[Skipped] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith((".", "#")) or name.endswith(_BACKUP_SUFFIXES):
            skipped.append(Skipped(phase, name, "hidden file or editor/package backup", refused=False))
            continue
        if not path.is_file():
            skipped.append(Skipped(phase, name, "not a regular file", refused=False))
            continue
        try:
            check(str(path), strict_parent=True)
        except TrustError as exc:
            skipped.append(Skipped(phase, name, f"refused: {exc}", refused=True))
            continue
        argv = _argv(path)
        if argv is None:
            skipped.append(Skipped(phase, name, "not executable (chmod +x to enable it)", refused=False))
            continue
        timeout = hooks_cfg.timeouts.get(f"{phase}/{name}", hooks_cfg.timeout)
        hooks.append(Hook(phase, name, path, argv, timeout))
    return hooks, skipped


def contract(
    phase: str,
    *,
    vm: InstanceInfo,
    events: Sequence[EventRecord],
    dry_run: bool,
    state_dir: str,
    manual: bool = False,
) -> tuple[dict[str, str], bytes]:
    """The ``DRAINER_*`` variables and the JSON document a hook of ``phase`` receives."""
    first = events[0].event if events else None
    env = {
        "DRAINER_PHASE": phase,
        "DRAINER_VERSION": __version__,
        "DRAINER_VM_NAME": vm.name,
        "DRAINER_VM_RESOURCE_ID": vm.resource_id,
        "DRAINER_DRY_RUN": "1" if dry_run else "0",
        "DRAINER_STATE_DIR": state_dir,
        "DRAINER_MANUAL": "1" if manual else "0",
        "DRAINER_EVENT_IDS": ",".join(r.event.event_id for r in events),
        "DRAINER_EVENT_ID": first.event_id if first else "",
        "DRAINER_EVENT_TYPE": first.event_type.value if first else "",
        "DRAINER_EVENT_STATUS": first.status.value if first else "",
        "DRAINER_NOT_BEFORE": format_iso(first.not_before) if first else "",
        "DRAINER_DURATION": ""
        if first is None
        else str(-1 if first.duration_seconds is None else first.duration_seconds),
        "DRAINER_RESOURCES": ",".join(first.resources) if first else "",
        "DRAINER_EVENT_SOURCE": first.source if first else "",
        "DRAINER_EVENT_CONCERNS_VM": "" if first is None else ("1" if first.concerns(vm.name) else "0"),
    }
    document = {
        "phase": phase,
        "drainer_version": __version__,
        "dry_run": dry_run,
        "manual": manual,
        "state_dir": state_dir,
        "vm": vm.to_json(),
        "events": [
            {**r.event.to_json(), "State": r.state.value, "ConcernsVm": r.event.concerns(vm.name)}
            for r in events
        ],
    }
    return env, json.dumps(document, indent=2).encode()


def environment(inherited: Mapping[str, str], contract_env: Mapping[str, str]) -> dict[str, str]:
    """The hook's environment: the allow-listed inherited variables, then the contract on top."""
    allowed = ALLOWED_ENV + (ALLOWED_ENV_WINDOWS if sys.platform == "win32" else ())
    env = {
        k: v
        for k, v in inherited.items()
        if (k in allowed or k.startswith("LC_")) and not k.startswith("DRAINER_")
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(contract_env)  # ours always win
    return env


def _hint(exit_code: int | None, start_error: str) -> str:
    if start_error:
        return (
            f"could not start it ({start_error}): check the #! line names an installed interpreter, "
            "and that the file system is not mounted noexec"
        )
    if exit_code == 126:
        return "exit 126: found but not executable (noexec mount, or a directory in the way?)"
    if exit_code == 127:
        return "exit 127: command not found (a missing interpreter in the #! line, or a PATH problem?)"
    return ""


class HookRunner:
    """Runs the hooks of one phase with the contract, logging every run."""

    def __init__(
        self,
        config: Config,
        log: Logger,
        inherited_env: Mapping[str, str],
        *,
        rehearsal: bool = False,
        note: Callable[[Hook, str, str], None] | None = None,
    ) -> None:
        """``rehearsal``: the contract's DRAINER_DRY_RUN (the effects seam says whether this is one).
        ``note``: told of every hook run (the hook, its outcome: ``ok``, ``exit N``, ``timed out``,
        ``refused``, and a hint), for the history."""
        self.config = config
        self.log = log
        self.inherited_env = inherited_env
        self.rehearsal = rehearsal
        self.note = note

    def run_phase(
        self, phase: str, *, vm: InstanceInfo, events: Sequence[EventRecord], manual: bool = False
    ) -> PhaseResult:
        hooks, skipped = discover(self.config, phase)
        for skip in skipped:
            self.log.warning("hook skipped", phase=phase, hook=skip.name, reason=skip.reason)
        if not hooks:
            return PhaseResult(phase, 0, tuple(f"{s.name}: {s.reason}" for s in skipped if s.refused))
        contract_env, document = contract(
            phase,
            vm=vm,
            events=events,
            dry_run=self.rehearsal,
            state_dir=self.config.state_dir,
            manual=manual,
        )
        env = environment(self.inherited_env, contract_env)
        failures = [f"{s.name}: {s.reason}" for s in skipped if s.refused]
        hooks_cfg = self.config.hooks
        for hook in hooks:
            try:
                fd, _ = open_file(str(hook.path), strict_parent=True)
            except TrustError as exc:  # changed since discovery
                failures.append(f"{hook.name}: refused: {exc}")
                self.log.error("hook refused", phase=phase, hook=hook.name, reason=str(exc))
                self._note(hook, "refused", str(exc))
                continue
            try:
                done = process.run(
                    hook.argv,
                    env=env,
                    stdin=document,
                    timeout=hook.timeout,
                    kill_grace=hooks_cfg.kill_grace,
                    output_limit=hooks_cfg.output_limit,
                    cwd=str(hook.path.parent),
                    executable_fd=fd,
                )
            finally:
                os.close(fd)
            fields: dict[str, Any] = {
                "phase": phase,
                "hook": hook.name,
                "exit_code": done.exit_code,
                "seconds": done.seconds,
                "stdout": done.stdout,
                "stderr": done.stderr,
            }
            result = "timeout" if done.timed_out else ("ok" if done.exit_code == 0 else "failed")
            metrics.current.inc("hook_runs", {"phase": phase, "result": result})
            if done.timed_out:
                failures.append(f"{hook.name}: timed out after {hook.timeout:g}s")
                self.log.error("hook timed out; its process group was killed", timeout=hook.timeout, **fields)
                self._note(hook, "timed out", f"after {hook.timeout:g}s; its process group was killed")
            elif done.start_error or done.exit_code != 0:
                hint = _hint(done.exit_code, done.start_error)
                failures.append(f"{hook.name}: {hint or f'exit {done.exit_code}'}")
                self.log.error("hook failed", hint=hint or None, **fields)
                self._note(hook, f"exit {done.exit_code}", hint or f"{done.seconds:.1f}s")
            else:
                self.log.info("hook ran", **fields)
                self._note(hook, "ok", f"{done.seconds:.1f}s")
        return PhaseResult(phase, len(hooks), tuple(failures))

    def _note(self, hook: Hook, outcome: str, detail: str) -> None:
        if self.note is not None:
            self.note(hook, outcome, detail)


class PendingPhases:
    """Phases whose hooks failed and are run again on later runs, while they still apply.

    Kept in the state database (``StateStore.pending_phases``); ``when`` is the drain state in which
    the phase still makes sense (``any`` for on-event).
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def load(self) -> list[dict[str, Any]]:
        return self.store.pending_phases()

    def save(self, pending: list[dict[str, Any]]) -> None:
        self.store.set_pending_phases(pending)

    def add(self, phase: str, event_ids: Sequence[str], when: str) -> None:
        pending = [p for p in self.load() if p.get("phase") != phase]
        pending.append({"phase": phase, "event_ids": list(event_ids), "when": when})
        self.save(pending)


class HookedActuator:
    """Wraps a built-in drain method in its hook phases (``PIPELINES``)."""

    def __init__(self, inner: Actuator, runner: HookRunner, pending: PendingPhases) -> None:
        self.inner = inner
        self.runner = runner
        self.pending = pending
        self.name = inner.name

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        self.inner.admit(action, ctx)

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        manual = not action.event_ids
        # The fleet's floor first: a held drain runs no hook (it would announce a drain that waits).
        self.inner.admit(action, ctx)
        pre = self.runner.run_phase("pre-drain", vm=ctx.vm, events=ctx.events, manual=manual)
        if not pre.ok:
            if self.runner.config.hooks.on_failure == "abort":
                for granted in ctx.admitted:
                    granted.withdraw()  # this VM stays in its pools: others need not count it out
                raise ActionError("drain", f"pre-drain hook failed: {'; '.join(pre.failures)}")
            ctx.log.warning(
                "pre-drain hook failed; draining anyway (on_failure = continue)", failures=list(pre.failures)
            )
        ctx.checkpoint("pre-drain-done")
        self.inner.drain(action, ctx)
        ctx.checkpoint("builtin-drain-done")
        self._after("post-drain", ctx, action.event_ids, "drained", manual)

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        ids = [r.event.event_id for r in ctx.events]
        pre = self.runner.run_phase("pre-restore", vm=ctx.vm, events=ctx.events)
        if not pre.ok:
            # Never let a hook keep the VM out of its pools: restore anyway, retry the phase later.
            self.pending.add("pre-restore", ids, "in_rotation")
        ctx.checkpoint("pre-restore-done")
        self.inner.restore(action, ctx)
        ctx.checkpoint("builtin-restore-done")
        self._after("post-restore", ctx, ids, "in_rotation", False)

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        """A reconcile runs no hooks: it converges what is with what should be, unannounced."""
        return self.inner.reconcile(out, ctx)

    def _after(
        self, phase: str, ctx: ActionContext, event_ids: Sequence[str], when: str, manual: bool
    ) -> None:
        result = self.runner.run_phase(phase, vm=ctx.vm, events=ctx.events, manual=manual)
        if not result.ok:
            self.pending.add(phase, list(event_ids), when)
            ctx.log.warning(
                f"{phase} hook failed; the phase is retried on the next run", failures=list(result.failures)
            )


def retry_pending(
    runner: HookRunner,
    pending: PendingPhases,
    *,
    vm: InstanceInfo,
    drain_state: str,
    events: Mapping[str, EventRecord],
    earlier: Sequence[dict[str, Any]],
) -> None:
    """Run again the phases that failed on earlier runs (``earlier``: the pending list as it was
    before this run's actions), while they still apply. Phases that failed in this run stay pending."""
    before = list(earlier)
    current = pending.load()
    keep = [p for p in current if p not in before]  # failed during this run: next run
    for item in [p for p in current if p in before]:
        phase = str(item.get("phase"))
        when = str(item.get("when"))
        if when not in ("any", drain_state):
            runner.log.info(
                "failed hook phase no longer applies; dropped", phase=phase, drain_state=drain_state
            )
            continue
        records = [events[i.casefold()] for i in item.get("event_ids", []) if i.casefold() in events]
        result = runner.run_phase(phase, vm=vm, events=records)
        if not result.ok:
            keep.append(item)
    pending.save(keep)


def listing(config: Config) -> list[str]:
    """``drainer hooks list``: every pipeline step in order, with what is skipped and why."""
    lines = [f"hooks directory: {config.hooks.dir}"]
    for pipeline, steps in PIPELINES.items():
        lines.append(f"{pipeline}:")
        for step in steps:
            kind, _, name = step.partition(":")
            if kind == "builtin":
                lines.append(f"  [built-in] {name} (method {config.drain.method})")
                continue
            hooks, skipped = discover(config, name)
            if not hooks and not skipped:
                lines.append(f"  {name}: (no hooks)")
            for hook in hooks:
                lines.append(f"  {name}/{hook.name}  timeout {hook.timeout:g}s")
            for skip in skipped:
                lines.append(f"  {name}/{skip.name}  SKIPPED: {skip.reason}")
    return lines


def problems(config: Config) -> list[str]:
    """Refused hooks (permission problems), for ``drainer config check``."""
    return [
        f"{s.phase}/{s.name}: {s.reason}" for phase in PHASES for s in discover(config, phase)[1] if s.refused
    ]
