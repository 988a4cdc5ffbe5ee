"""The drain methods that need no Azure SDK, and the factory that picks one for the config.

The runner never asks ``if dry_run``: a dry run wraps the actuator (``log``), the ARM client
(``nic``, ``admin-state``) or the flag writer (``probe``) so that nothing is changed.
"""

from __future__ import annotations

from typing import Any

from drainer.act.actuator import ActionContext, Actuator
from drainer.config import Config
from drainer.decide.core import Drain, Restore
from drainer.io.imds import InstanceInfo


class LogActuator:
    """Drain method ``log``: records and logs the decision, changes nothing outside drainer."""

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

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        return False, "nothing outside drainer to compare (method log)"


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

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        return False, f"dry-run: would compare with what should be ({'out' if out else 'in'})"


def make_actuator(config: Config, vm: InstanceInfo, log: Any) -> Actuator:
    """The actuator for ``config.drain.method``.

    A dry run of ``log`` is wrapped whole; the load-balancer methods make their reads and log the
    writes they would make (their ARM client is wrapped instead).
    """
    if config.drain.method == "probe":
        from drainer.act.probe import ProbeDrain  # noqa: PLC0415

        return ProbeDrain(config.probe.flag_file, dry_run=config.dry_run)
    if config.drain.method in ("nic", "admin-state"):
        from drainer.act.lb import make_lb_actuator  # noqa: PLC0415 - imports the Azure SDK

        return make_lb_actuator(config, vm, log)
    actuator: Actuator = LogActuator()
    return DryRunActuator(actuator) if config.dry_run else actuator
