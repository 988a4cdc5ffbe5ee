"""The load-balancer drain methods (``nic``, ``admin-state``) over the ARM client.

Imported only when there is something to drain, restore or reconcile: it imports the Azure SDK.
"""

from __future__ import annotations

from typing import Any

from drainer.actuator import Actuator
from drainer.config import Config
from drainer.imds import InstanceInfo
from drainer.lb_admin import AdminStateDrain
from drainer.lb_nic import NicDrain


def make_lb_actuator(config: Config, vm: InstanceInfo, log: Any) -> Actuator:
    """The actuator for ``[drain] method`` nic or admin-state, over a (dry-run wrapped) ARM client."""
    from drainer.arm import ArmNetwork, DryRunNetwork, Network  # noqa: PLC0415

    network: Network = ArmNetwork(
        config.azure, subscription_id=vm.subscription_id, imds_endpoint=config.imds.endpoint
    )
    if config.dry_run:
        network = DryRunNetwork(network, log)
    if config.drain.method == "admin-state":
        return AdminStateDrain(network)
    return NicDrain(network)


__all__ = ["AdminStateDrain", "NicDrain", "make_lb_actuator"]
