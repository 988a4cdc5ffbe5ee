"""The load-balancer drain methods (``nic``, ``admin-state``) over the ARM client.

Imported only when there is something to drain, restore or reconcile: it imports the Azure SDK.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from azure.mgmt.network.models import (
    ApplicationGateway,
    ApplicationSecurityGroup,
    BackendAddressPool,
    LoadBalancer,
    NetworkInterface,
)

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


def make_network(
    config: Config, vm: InstanceInfo, log: Logger, effects: Effects, *, own_writes: bool = False
) -> Network:
    """This VM's subscription's ARM network client, writing through ``effects``. ``own_writes``: a
    NIC read right after this client wrote it is answered with the written NIC (``OwnWrites``)."""
    from drainer.io.arm import ArmNetwork  # noqa: PLC0415

    arm: Network = ArmNetwork(
        config.azure, subscription_id=vm.subscription_id, imds_endpoint=config.imds.endpoint
    )
    return effects.network(OwnWrites(arm) if own_writes else arm, log)


class OwnWrites:
    """A ``Network`` whose first read of a NIC after this client wrote it returns what the write's
    long-running operation ended with (the SDK's final GET of the NIC, a moment ago) instead of
    reading it again: a drain settles its records, and a restore reads the other method's records,
    on the NIC it has just written. Any other read goes to ARM; a stale answer could only make a
    later write fail its If-Match (412), whose retry reads ARM. Sits below the dry-run wrapper, so
    a dry run (which writes nothing) never sees it."""

    def __init__(self, inner: Network) -> None:
        self.inner = inner
        self._written: dict[tuple[str, str], NetworkInterface] = {}

    @property
    def calls(self) -> int:
        return self.inner.calls

    def start(self) -> None:
        self.inner.start()

    def put_nic(self, resource_group: str, name: str, nic: NetworkInterface) -> NetworkInterface:
        key = (resource_group.lower(), name.lower())
        self._written.pop(key, None)
        written = self.inner.put_nic(resource_group, name, nic)
        self._written[key] = written
        return written

    def get_nic(self, resource_group: str, name: str) -> NetworkInterface:
        written = self._written.pop((resource_group.lower(), name.lower()), None)
        return copy.deepcopy(written) if written is not None else self.inner.get_nic(resource_group, name)

    def get_scale_set_nic(
        self, resource_group: str, scale_set: str, index: str, name: str
    ) -> NetworkInterface:
        return self.inner.get_scale_set_nic(resource_group, scale_set, index, name)

    def get_vm_nics(self, resource_id: str) -> list[str]:
        return self.inner.get_vm_nics(resource_id)

    def list_nics(self, resource_group: str) -> list[NetworkInterface]:
        return self.inner.list_nics(resource_group)

    def get_load_balancer(self, resource_group: str, name: str) -> LoadBalancer:
        return self.inner.get_load_balancer(resource_group, name)

    def list_load_balancers(self, resource_group: str) -> list[LoadBalancer]:
        return self.inner.list_load_balancers(resource_group)

    def list_all_nics(self) -> list[NetworkInterface]:
        return self.inner.list_all_nics()

    def list_all_load_balancers(self) -> list[LoadBalancer]:
        return self.inner.list_all_load_balancers()

    def get_app_gateway(self, resource_group: str, name: str) -> ApplicationGateway:
        return self.inner.get_app_gateway(resource_group, name)

    def get_asg(self, resource_group: str, name: str) -> ApplicationSecurityGroup:
        return self.inner.get_asg(resource_group, name)

    def put_asg(
        self, resource_group: str, name: str, asg: ApplicationSecurityGroup
    ) -> ApplicationSecurityGroup:
        return self.inner.put_asg(resource_group, name, asg)

    def put_pool(
        self, resource_group: str, lb: str, name: str, pool: BackendAddressPool
    ) -> BackendAddressPool:
        return self.inner.put_pool(resource_group, lb, name, pool)


def make_lb_actuator(config: Config, vm: InstanceInfo, log: Logger, effects: Effects) -> Actuator:
    """The actuator for ``[drain] method`` nic or admin-state. Raises DrainerError (no credential)."""
    network = make_network(config, vm, log, effects, own_writes=True)
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
        ctx.records.close()  # everything is back: a record of this drain is refused from now on
        release(self.network, ctx, discover_nics(self.network, ctx))

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        changed, found = self.method.reconcile(out, ctx)
        if out:
            return changed, found
        also, other = self.other.reconcile(False, ctx)
        ctx.records.close()
        # In rotation: no intent of this VM may stay, whether or not this reconcile changed anything.
        release(self.network, ctx, discover_nics(self.network, ctx))
        return changed or also, f"{found}; {other}" if also else found


__all__ = ["AdminStateDrain", "NicDrain", "make_lb_actuator", "make_network"]
