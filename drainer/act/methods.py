"""The drain methods that need no Azure SDK, and the factory that picks one for the config.

Nothing here asks whether this is a dry run: the effects seam (``drainer.act.effects``) wraps the
actuator (``log``), the ARM client (``nic``, ``admin-state``) or writes the flag (``probe``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drainer.act.actuator import ActionContext, Actuator
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.core import Drain, Restore

if TYPE_CHECKING:
    from drainer.act.effects import Effects


class LogActuator:
    """Drain method ``log``: records and logs the decision, changes nothing outside drainer."""

    name = "log"

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        return None  # changes no pool: nothing to keep a floor of

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


def make_actuator(config: Config, vm: InstanceInfo, log: Logger, effects: Effects) -> Actuator:
    """The actuator for ``config.drain.method``, changing the world through ``effects``.
    Raises DrainerError when the method cannot be set up (e.g. no credential)."""
    if config.drain.method == "probe":
        from drainer.act.probe import ProbeDrain  # noqa: PLC0415

        return ProbeDrain(config.probe.flag_file, effects)
    if config.drain.method in ("nic", "admin-state"):
        from drainer.act.lb import make_lb_actuator  # noqa: PLC0415 - imports the Azure SDK

        return make_lb_actuator(config, vm, log, effects)
    return effects.announce(LogActuator())
