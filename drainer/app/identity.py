"""Who this VM is: instance metadata, cached in the state (``StateStore.identity``), re-read at every
boot, whenever the local state is new, and before every drain. A cached identity that differs from
what IMDS says (a state directory captured in an image, or copied from another VM) is never acted on."""

from __future__ import annotations

from drainer.base.instance import InstanceInfo
from drainer.config import Config
from drainer.io.imds import ImdsClient


def same_vm(a: InstanceInfo, b: InstanceInfo) -> bool:
    """The same VM: vmId (unique per VM, kept across redeploys) and resource id, when both are known."""
    if a.vm_id and b.vm_id and a.vm_id.lower() != b.vm_id.lower():
        return False
    if a.resource_id and b.resource_id and a.resource_id.lower() != b.resource_id.lower():
        return False
    return a.name.casefold() == b.name.casefold()


def with_override(config: Config, info: InstanceInfo) -> InstanceInfo:
    """``vm.name`` in the config overrides the name IMDS gives."""
    if config.vm_name and config.vm_name != info.name:
        return info._replace(name=config.vm_name)
    return info


def read(imds: ImdsClient) -> InstanceInfo:
    """The identity IMDS gives now. Raises ImdsError, MalformedDocumentError."""
    return imds.instance()
