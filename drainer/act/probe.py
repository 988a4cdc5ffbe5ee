"""Drain method ``probe``: no Azure credentials, works for scale-set Uniform instances.

The VM leaves rotation by failing the load balancer's health probe. The readiness answer comes from
the persisted state (the VM's drain state in the state database, which survives a daemon restart, a
reboot and a removed runtime directory); the flag file is a convenience for an application whose own
health check reads it, and every run puts it back in line with the state.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from drainer.base.errors import ActionError
from drainer.decide.core import Drain, Restore
from drainer.io.safefile import UnsafeFileError, ensure_dir, write_atomic
from drainer.store.state import DB_NAME


class ProbeDrain:
    name = "probe"

    def __init__(self, flag_file: str, *, dry_run: bool) -> None:
        self.flag = Path(flag_file)
        self.dry_run = dry_run

    def drain(self, action: Drain, ctx: Any) -> None:
        self._set(True, ",".join(action.event_ids), ctx)

    def restore(self, action: Restore, ctx: Any) -> None:
        self._set(False, "", ctx)

    def reconcile(self, out: bool, ctx: Any) -> tuple[bool, str]:
        if self.flag.exists() == out:
            return False, "flag file matches the state"
        self._set(out, "reconcile", ctx)
        return True, f"flag file {'created' if out else 'removed'} to match the state"

    def _set(self, out: bool, text: str, ctx: Any) -> None:
        if self.dry_run:
            what = "create" if out else "remove"
            ctx.log.warning(f"dry-run: would {what} the out-of-rotation flag", flag=str(self.flag))
            return
        try:  # never through a planted symlink, in a directory no other user can write to
            if out:
                ensure_dir(self.flag.parent, 0o755)
                write_atomic(self.flag, (text + "\n").encode(), 0o644)
            else:
                self.flag.unlink(missing_ok=True)
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
    try:
        db = sqlite3.connect(f"file:{Path(state_dir) / DB_NAME}?mode=ro", uri=True, timeout=1)
        try:
            row = db.execute("SELECT drain_state FROM vm WHERE id = 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        row = None
    if row is not None:
        return bool(row[0] != "in_rotation")
    # No state yet (or unreadable this instant): the flag decides, if drainer wrote it (a regular
    # file owned by root or drainer's user; anything another user planted there is ignored).
    try:
        info = os.lstat(flag_file)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid in (0, os.geteuid())
