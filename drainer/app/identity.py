"""Who this VM is: instance metadata, cached in the state (``StateStore.identity``), re-read at every
boot, whenever the local state is new, and before every drain. A cached identity that differs from
what IMDS says (a state directory captured in an image, or copied from another VM) is never acted on.

A known identity stands: within one boot, when instance metadata fails (429, 5xx, time-outs, a
malformed answer) while Scheduled Events answer, the identity IMDS already gave in this boot is used
(the state's, verified at this boot's first run; or, in the daemon, the one this process read). Only
a *different* identity stops a drain. The re-read before a drain is bounded (``REREAD_SECONDS``): a
Preempt gives 30 seconds' notice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drainer.base.errors import ImdsError
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.config import Config
from drainer.io.imds import ImdsClient
from drainer.store.state import StateStore

if TYPE_CHECKING:
    from drainer.act.effects import Effects

REREAD_SECONDS = 5.0
# boot id -> the identity IMDS gave this process in that boot (the daemon's runs share it).
_THIS_BOOT: dict[str, InstanceInfo] = {}


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


def read(imds: ImdsClient, boot_id: str | None = None) -> InstanceInfo:
    """The identity IMDS gives now. Raises ImdsError, MalformedDocumentError."""
    info = imds.instance()
    if boot_id:
        _THIS_BOOT[boot_id] = info
    return info


def verified(boot_id: str | None, info: InstanceInfo) -> InstanceInfo:
    """``info`` was verified in this boot (the state's identity, cached at this boot's first run)."""
    if boot_id:
        _THIS_BOOT[boot_id] = info
    return info


def read_or_known(imds: ImdsClient, boot_id: str | None, log: Logger) -> InstanceInfo:
    """The identity IMDS gives now; when IMDS fails, the one it gave this process in this boot.
    Raises ImdsError, MalformedDocumentError when there is none."""
    try:
        return read(imds, boot_id)
    except ImdsError as exc:
        known = _THIS_BOOT.get(boot_id or "")
        if known is None:
            raise
        _stands(log, known, exc)
        return known


def recheck(imds: ImdsClient, verified: InstanceInfo, boot_id: str | None, log: Logger) -> InstanceInfo:
    """Before a drain: the identity IMDS gives now (within ``REREAD_SECONDS``), or ``verified`` (this
    boot's) when IMDS fails. The caller compares: only a different identity stops the drain."""
    config = imds.config._replace(deadline=min(imds.config.deadline, REREAD_SECONDS))
    client = ImdsClient(config)
    try:
        return read(client, boot_id)
    except ImdsError as exc:
        _stands(log, verified, exc)
        return verified
    finally:
        client.close()


def _stands(log: Logger, known: InstanceInfo, exc: ImdsError) -> None:
    log.warning(
        "instance metadata failed: this boot's identity stands (only a different identity stops a drain)",
        vm=known.name,
        vm_id=known.vm_id,
        error=str(exc),
    )


def identify(
    store: StateStore, imds: ImdsClient, effects: Effects, log: Logger, *, boot_id: str | None
) -> InstanceInfo | bool:
    """This VM's identity; when the state belongs to another VM (never acted on), whether the run
    must start over (see ``other_vm``).

    Read from IMDS when the state is new or the VM booted since the last run; else the cached one.
    Raises ImdsError, MalformedDocumentError.
    """
    known = store.identity()
    if known is not None and not store.fresh and boot_id == store.boot_id():
        return verified(boot_id, known)
    current = read_or_known(imds, boot_id, log)
    if known is None and not store.fresh and store.holds_anything():
        # A state that never said whose it is: it cannot be shown to be this VM's, so it is never
        # acted on (the records on the NICs are the truth; the next pass reconciles with them).
        return other_vm(store, effects, log, InstanceInfo(name="(unknown)"), current)
    if known is not None and not same_vm(known, current):
        return other_vm(store, effects, log, known, current)
    if known != current:
        store.set_identity(current)
    return current


def other_vm(
    store: StateStore, effects: Effects, log: Logger, known: InstanceInfo, current: InstanceInfo
) -> bool:
    """Set another VM's state aside; True when the run must start over on a new state."""
    log.error(
        "the state directory belongs to another VM: its records are set aside and never acted on",
        state_vm=known.name,
        state_vm_id=known.vm_id,
        vm=current.name,
        vm_id=current.vm_id,
    )
    return effects.set_aside(store, f"other-vm-{known.name}")
