"""Carrying out the core's actions. Every drain method implements ``Actuator``.

The runner never asks ``if dry_run``: a dry run wraps the real actuator in ``DryRunActuator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from drainer.config import Config
from drainer.core import Drain, EventRecord, Restore
from drainer.imds import InstanceInfo
from drainer.ledger import Ledger
from drainer.state import StateStore


@dataclass(frozen=True)
class ActionContext:
    config: Config
    vm: InstanceInfo
    events: tuple[EventRecord, ...]  # the events the action is for (empty for a restore)
    log: Any
    ledger: Ledger  # what was changed outside drainer, recorded before the change
    store: StateStore | None = None  # for caches (NIC ids); None in a dry run
    # Crash-injection seam between the steps of an action (see drainer.runner.Seams).
    checkpoint: Callable[[str], None] = lambda _: None


class Actuator(Protocol):
    """A drain method. Both calls are idempotent and raise ActionError on failure."""

    name: str

    def drain(self, action: Drain, ctx: ActionContext) -> None: ...

    def restore(self, action: Restore, ctx: ActionContext) -> None: ...


class LogActuator:
    """Drain method ``log``: records and logs the decision, changes nothing outside drainer.

    Useful on its own with hooks (a later release) or to watch what drainer would do.
    """

    name = "log"

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        ctx.log.warning(
            "vm leaving rotation",
            vm=ctx.vm.name,
            event_ids=list(action.event_ids),
            event_types=list(action.event_types),
            method=self.name,
        )

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        ctx.log.warning("vm returning to rotation", vm=ctx.vm.name, method=self.name)


class DryRunActuator:
    """Wraps a real actuator: logs what it would do and does nothing."""

    def __init__(self, inner: Actuator) -> None:
        self.inner = inner
        self.name = f"dry-run({inner.name})"

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        ctx.log.warning(
            "dry-run: would take vm out of rotation",
            vm=ctx.vm.name,
            event_ids=list(action.event_ids),
            method=self.inner.name,
        )

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        ctx.log.warning("dry-run: would put vm back into rotation", vm=ctx.vm.name, method=self.inner.name)


def make_actuator(config: Config, vm: InstanceInfo, log: Any) -> Actuator:
    """The actuator for ``config.drain.method``.

    A dry run of ``log`` is wrapped whole; the load-balancer methods make their reads and log the
    writes they would make (their ARM client is wrapped instead).
    """
    if config.drain.method == "probe":
        from drainer.probe import ProbeDrain  # noqa: PLC0415

        return ProbeDrain(config.probe.flag_file, dry_run=config.dry_run)
    if config.drain.method in ("nic", "admin-state"):
        from drainer.lb import make_lb_actuator  # noqa: PLC0415 - imports the Azure SDK

        lb_actuator: Actuator = make_lb_actuator(config, vm, log)
        return lb_actuator
    actuator: Actuator = LogActuator()
    return DryRunActuator(actuator) if config.dry_run else actuator
