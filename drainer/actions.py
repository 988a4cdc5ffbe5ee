"""Carrying out the core's actions. Every drain method implements ``Actuator``.

The runner never asks ``if dry_run``: a dry run wraps the real actuator in ``DryRunActuator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from drainer.config import Config
from drainer.core import Drain, EventRecord, Restore
from drainer.imds import InstanceInfo


@dataclass(frozen=True)
class ActionContext:
    config: Config
    vm: InstanceInfo
    events: tuple[EventRecord, ...]  # the events the action is for (empty for a restore)
    log: Any


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


def make_actuator(config: Config) -> Actuator:
    """The actuator for ``config.drain.method``, wrapped for a dry run."""
    actuator: Actuator = LogActuator()
    return DryRunActuator(actuator) if config.dry_run else actuator
