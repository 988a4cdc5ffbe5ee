"""The effects seam: every side effect of a run, in one interface with two implementations.

``RealEffects`` changes the world (the run lock, the state database, the last-check stamp, ARM
writes, the probe's flag file, IMDS approvals, the outcome file); ``DryRunEffects`` makes the same
reads and says what it would change, writing nothing at all. ``effects_for`` chooses one, once per
run: it is the only code that reads ``config.dry_run``. Nothing else asks "is this a dry run?".

Both classes subclass the ``Effects`` Protocol explicitly, so a new effect added to the Protocol and
forgotten in either twin makes that class abstract: mypy refuses to instantiate it (and so does
Python).

What a dry run still does, on purpose: every read (IMDS, ARM, the state, hooks' discovery), and hooks
run with ``DRAINER_DRY_RUN=1`` (the hook contract: a hook decides what a rehearsal means for it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drainer.act.seams import Seams
from drainer.base.typing import Logger
from drainer.config import Config

if TYPE_CHECKING:
    from drainer.act.actuator import ActionContext, Actuator
    from drainer.decide.model import Drain, Restore, State
    from drainer.io.arm import Network
    from drainer.io.imds import ImdsClient
    from drainer.io.lock import RunLock
    from drainer.io.recordkey import KeyStore
    from drainer.store.state import StateStore


class Effects(Protocol):
    """Every change a run makes outside its own memory. Raise what the real effect raises."""

    # The hook contract's DRAINER_DRY_RUN: hooks are told, and decide for themselves.
    rehearsal: bool

    def log(self, log: Logger) -> Logger:
        """The run's logger (a dry run's says "would" where the real one says "did")."""
        ...

    def lock(self, state_dir: str) -> AbstractContextManager[object]:
        """Against overlapping runs. Raises LockedError, StateError."""
        ...

    def open_store(self, state_dir: str) -> tuple[StateStore, State, str]:
        """The state store and its state (see ``drainer.store.state.open_store``). Raises StateError."""
        ...

    def close_store(self, store: StateStore) -> None:
        """Done with the store for this run."""
        ...

    def set_aside(self, store: StateStore, label: str) -> bool:
        """Move another VM's state aside; True when the run must start over. Raises StateError."""
        ...

    def touch_last_check(self, state_dir: str) -> None:
        """The last successful check's stamp. Raises UnsafeFileError, OSError."""
        ...

    def record_outcome(self, state_dir: str, error: str | None, error_type: str) -> None:
        """For ``drainer status``: the outcome of a check."""
        ...

    def spread(self, seconds: float) -> None:
        """Wait a random moment of up to ``seconds`` before a drain or restore's ARM writes."""
        ...

    def network(self, network: Network, log: Logger) -> Network:
        """The ARM client the drain methods write through."""
        ...

    def flag(self, path: Path, out: bool, text: str, log: Logger) -> bool:
        """Create (``out``) or remove the probe method's flag file; True when it was changed.
        Raises UnsafeFileError, OSError."""
        ...

    def announce(self, actuator: Actuator) -> Actuator:
        """The ``log`` drain method, whose only effect is its log line."""
        ...

    def approve(self, imds: ImdsClient, event_ids: Sequence[str], log: Logger) -> bool:
        """POST StartRequests; True when sent (then recorded). Raises ImdsError."""
        ...

    def own_drain_visible(self) -> bool:
        """Whether this VM's own drain shows in what ARM answers (a dry run's was never made)."""
        ...

    def retry_phases(self, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of the hook phases that failed on earlier runs, those to run again now."""
        ...

    def record_keys(self, config: Config) -> KeyStore:
        """The key drainer signs its NIC records with, and the drain counter beside it."""
        ...


class Resident:
    """What a long-lived process (the daemon) keeps open from one run to the next: the run lock's
    descriptor (locked only during a run) and the state database's connection. Both are reopened,
    with every check of a first open, when the file at their path is no longer the one held (moved
    aside, deleted, replaced) and at least every ``recheck`` seconds."""

    def __init__(self, recheck: float = 60.0) -> None:
        self.recheck = recheck
        self.lock: RunLock | None = None
        self.store: StateStore | None = None
        self.store_checked = 0.0

    def forget_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def close(self) -> None:
        """Before the process goes (or re-executes): the database closed, the lock file too."""
        self.forget_store()
        if self.lock is not None:
            self.lock.close()
            self.lock = None


class RealEffects(Effects):
    """The world changes."""

    rehearsal = False

    def __init__(self, seams: Seams, resident: Resident | None = None) -> None:
        self._seams = seams
        self._resident = resident

    def log(self, log: Logger) -> Logger:
        return log

    def lock(self, state_dir: str) -> AbstractContextManager[object]:
        from drainer.io.lock import RunLock  # noqa: PLC0415

        if self._resident is None:
            return RunLock(state_dir)
        if self._resident.lock is None:
            self._resident.lock = RunLock(state_dir, keep=True, recheck=self._resident.recheck)
        return self._resident.lock

    def open_store(self, state_dir: str) -> tuple[StateStore, State, str]:
        import time  # noqa: PLC0415

        from drainer.store.state import open_store  # noqa: PLC0415

        resident = self._resident
        if resident is None:
            return open_store(state_dir)
        now = time.monotonic()
        kept = resident.store
        if kept is not None and now - resident.store_checked < resident.recheck and kept.still_at_path():
            kept.fresh = False  # created (if at all) by an earlier run
            return kept, kept.load("open"), ""
        resident.forget_store()
        store, state, note = open_store(state_dir)
        resident.store, resident.store_checked = store, now
        return store, state, note

    def close_store(self, store: StateStore) -> None:
        if self._resident is None or self._resident.store is not store:
            store.close()

    def set_aside(self, store: StateStore, label: str) -> bool:
        from drainer.store.state import set_aside  # noqa: PLC0415

        store.close()
        if self._resident is not None and self._resident.store is store:
            self._resident.store = None
        set_aside(store.dir, label)
        return True

    def touch_last_check(self, state_dir: str) -> None:
        from drainer.store.stamp import touch_last_check  # noqa: PLC0415

        touch_last_check(state_dir)

    def record_outcome(self, state_dir: str, error: str | None, error_type: str) -> None:
        from drainer.store import outcome  # noqa: PLC0415

        if error is None:
            outcome.succeeded(state_dir)
        else:
            outcome.failed(state_dir, error, error_type)

    def spread(self, seconds: float) -> None:
        self._seams.spread(seconds)

    def network(self, network: Network, log: Logger) -> Network:
        return network

    def flag(self, path: Path, out: bool, text: str, log: Logger) -> bool:
        from drainer.io.safefile import ensure_dir, write_atomic  # noqa: PLC0415

        # Never through a planted symlink, in a directory no other user can write to.
        if out:
            ensure_dir(path.parent, 0o755)
            write_atomic(path, (text + "\n").encode(), 0o644)
        else:
            path.unlink(missing_ok=True)
        return True

    def announce(self, actuator: Actuator) -> Actuator:
        return actuator

    def approve(self, imds: ImdsClient, event_ids: Sequence[str], log: Logger) -> bool:
        imds.approve(event_ids)
        return True

    def own_drain_visible(self) -> bool:
        return True

    def retry_phases(self, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return pending

    def record_keys(self, config: Config) -> KeyStore:
        from drainer.io.recordkey import FileKeyStore, key_path  # noqa: PLC0415

        return FileKeyStore(key_path(config.state_dir, config.drain.record_key))


class DryRunEffects(Effects):
    """Reads as usual, changes nothing: no lock, an in-memory copy of the state, ARM writes and
    approvals logged instead of sent."""

    rehearsal = True

    def log(self, log: Logger) -> Logger:
        return DryRunLog(log)

    def lock(self, state_dir: str) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def open_store(self, state_dir: str) -> tuple[StateStore, State, str]:
        from drainer.store.state import open_store  # noqa: PLC0415

        return open_store(state_dir, in_memory=True)

    def close_store(self, store: StateStore) -> None:
        store.close()

    def set_aside(self, store: StateStore, label: str) -> bool:
        return False  # nothing moved: starting over would find the same state

    def touch_last_check(self, state_dir: str) -> None:
        return None

    def record_outcome(self, state_dir: str, error: str | None, error_type: str) -> None:
        return None

    def spread(self, seconds: float) -> None:
        return None

    def network(self, network: Network, log: Logger) -> Network:
        from drainer.io.arm import DryRunNetwork  # noqa: PLC0415

        return DryRunNetwork(network, log)

    def flag(self, path: Path, out: bool, text: str, log: Logger) -> bool:
        log.warning(
            f"dry-run: would {'create' if out else 'remove'} the out-of-rotation flag", flag=str(path)
        )
        return False

    def announce(self, actuator: Actuator) -> Actuator:
        return DryRunActuator(actuator)

    def approve(self, imds: ImdsClient, event_ids: Sequence[str], log: Logger) -> bool:
        log.warning("dry-run: would approve (StartRequests)", event_ids=list(event_ids))
        return False

    def own_drain_visible(self) -> bool:
        return False  # its drain was only logged: approval takes it as made

    def retry_phases(self, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return []  # a rehearsal does not run again what real runs left failing

    def record_keys(self, config: Config) -> KeyStore:
        from drainer.io.recordkey import FileKeyStore, MemoryKeyStore, key_path  # noqa: PLC0415

        # Read as they are; a key the run would make, and the drain it would open, stay in memory.
        return MemoryKeyStore(FileKeyStore(key_path(config.state_dir, config.drain.record_key)))


def effects_for(config: Config, seams: Seams, resident: Resident | None = None) -> Effects:
    """The one place a dry run is decided. ``resident``: what a daemon keeps open between runs."""
    return DryRunEffects() if config.dry_run else RealEffects(seams, resident)


class DryRunLog:
    """A dry run's log: every line says what would happen, none claims that it happened."""

    _WOULD = (
        ("succeeded", "would succeed"),
        ("removed NIC from pools", "would remove NIC from pools"),
        ("returned NIC to pools", "would return NIC to pools"),
        ("set admin state", "would set admin state"),
        ("transition", "transition (not saved)"),
        ("reconciled", "would reconcile"),
    )

    def __init__(self, inner: Logger) -> None:
        self._inner = inner

    def _say(self, text: str) -> str:
        for done, would in self._WOULD:
            text = text.replace(done, would)
        return text

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> Any:
        method: Callable[..., Any] = getattr(self._inner, level)
        event = event if event.startswith("dry-run") else f"dry-run: {self._say(event)}"
        return method(event, **{k: self._say(v) if isinstance(v, str) else v for k, v in fields.items()})

    def debug(self, event: str, **fields: Any) -> Any:
        return self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._emit("error", event, fields)


class DryRunActuator:
    """Wraps a real actuator: logs what it would do and does nothing."""

    def __init__(self, inner: Actuator) -> None:
        self.inner = inner
        self.name = f"dry-run({inner.name})"

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        return None

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        ctx.log.warning(
            "dry-run: would take vm out of rotation",
            vm=ctx.vm.name,
            event_ids=list(action.event_ids),
            method=self.inner.name,
        )

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        ctx.log.warning("dry-run: would put vm back into rotation", vm=ctx.vm.name, method=self.inner.name)

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        return False, f"dry-run: would compare with what should be ({'out' if out else 'in'})"
