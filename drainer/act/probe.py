"""Drain method ``probe``: no Azure credentials, works for scale-set Uniform instances.

The VM leaves rotation by failing the load balancer's health probe. The readiness answer comes from
the persisted state (the VM's drain state in the state database, which survives a daemon restart, a
reboot and a removed runtime directory); the flag file is a convenience for an application whose own
health check reads it, and every run puts it back in line with the state.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from drainer.base.errors import ActionError
from drainer.config import Config
from drainer.decide.core import Drain, Restore
from drainer.decide.model import DrainState, State
from drainer.io.safefile import UnsafeFileError
from drainer.store.files import read_drain_state

if TYPE_CHECKING:
    from drainer.act.actuator import ActionContext
    from drainer.act.effects import Effects


class ProbeDrain:
    name = "probe"

    def __init__(self, flag_file: str, effects: Effects) -> None:
        self.flag = Path(flag_file)
        self.effects = effects

    def admit(self, action: Drain, ctx: ActionContext) -> None:
        return None  # the health probe's pools are not read: no floor

    def drain(self, action: Drain, ctx: ActionContext) -> None:
        self._set(True, ",".join(action.event_ids), ctx)

    def restore(self, action: Restore, ctx: ActionContext) -> None:
        self._set(False, "", ctx)

    def reconcile(self, out: bool, ctx: ActionContext) -> tuple[bool, str]:
        if self.flag.exists() == out:
            return False, "flag file matches the state"
        self._set(out, "reconcile", ctx)
        return True, f"flag file {'created' if out else 'removed'} to match the state"

    def _set(self, out: bool, text: str, ctx: ActionContext) -> None:
        try:
            if not self.effects.flag(self.flag, out, text, ctx.log):
                return
        except UnsafeFileError as exc:
            raise ActionError("drain" if out else "restore", f"cannot change {self.flag}: {exc}") from exc
        except OSError as exc:
            raise ActionError(
                "drain" if out else "restore", f"cannot change {self.flag}: {exc.strerror}"
            ) from exc
        if out:
            ctx.log.info("health probe now fails: out-of-rotation flag set", flag=str(self.flag))
        else:
            ctx.log.info("health probe passes again: out-of-rotation flag removed", flag=str(self.flag))


def out_of_rotation(state_dir: str, flag_file: str) -> bool:
    """The readiness answer: out while the persisted drain state is not ``in_rotation``."""
    drain_state = read_drain_state(state_dir)
    if drain_state is not None:
        return drain_state != "in_rotation"
    # No state yet (or unreadable this instant): the flag decides, if drainer wrote it (a regular
    # file owned by root or drainer's user; anything another user planted there is ignored).
    try:
        info = os.lstat(flag_file)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid in (0, os.geteuid())


def drift(config: Config, state: State) -> str:
    """Whether what is on this VM disagrees with the state (one stat, for the probe method)."""
    if config.drain.method != "probe":
        return ""
    out = state.vm.drain_state in (DrainState.DRAINED, DrainState.RESTORING)
    if Path(config.probe.flag_file).exists() != out:
        return "the out-of-rotation flag does not match the state"
    return ""
