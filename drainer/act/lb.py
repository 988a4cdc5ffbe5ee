"""The load-balancer drain methods (``nic``, ``admin-state``) over the ARM client.

Imported only when there is something to drain, restore or reconcile: it imports the Azure SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drainer.act.actuator import ActionContext, Actuator
from drainer.act.effects import Effects
from drainer.act.floor import release
from drainer.act.lb_admin import AdminStateDrain
from drainer.act.lb_common import discover_nics
from drainer.act.lb_nic import NicDrain
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.core import Drain, Restore

if TYPE_CHECKING:
    from drainer.io.arm import Network


def make_network(config: Config, vm: InstanceInfo, log: Logger, effects: Effects) -> Network:
    """This VM's subscription's ARM network client, writing through ``effects``."""
    from drainer.io.arm import ArmNetwork  # noqa: PLC0415

    return effects.network(
        ArmNetwork(config.azure, subscription_id=vm.subscription_id, imds_endpoint=config.imds.endpoint), log
    )


def make_lb_actuator(config: Config, vm: InstanceInfo, log: Logger, effects: Effects) -> Actuator:
    """The actuator for ``[drain] method`` nic or admin-state. Raises DrainerError (no credential)."""
    network = make_network(config, vm, log, effects)
    nic, admin = NicDrain(network), AdminStateDrain(network)
    return _Restoring(admin, nic) if config.drain.method == "admin-state" else _Restoring(nic, admin)


class _Restoring:
    """The configured method, whose restores also put back what the *other* load-balancer method
    recorded (the method may have changed while the VM was out: its records must still be read)."""

    def __init__(self, method: NicDrain | AdminStateDrain, other: NicDrain | AdminStateDrain) -> None:
        self.method = method
        self.other = other
        self.name = method.name
        self.network = method.network

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        self.method.admit(action, ctx)

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        self.method.drain(action, ctx)

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        self.method.restore(action, ctx)
        self.other.reconcile(False, ctx)
        release(self.network, ctx, discover_nics(self.network, ctx))

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        changed, found = self.method.reconcile(out, ctx)
        if out:
            return changed, found
        also, other = self.other.reconcile(False, ctx)
        # In rotation: no intent of this VM may stay, whether or not this reconcile changed anything.
        release(self.network, ctx, discover_nics(self.network, ctx))
        return changed or also, f"{found}; {other}" if also else found


__all__ = ["AdminStateDrain", "NicDrain", "make_lb_actuator", "make_network"]
