"""Drain method ``probe``: no Azure credentials, works for scale-set Uniform instances.

The VM leaves rotation by failing the load balancer's health probe: while drained, the flag file
exists, the daemon's readiness URL answers 503, and an application whose own health check reads the
flag answers 503 too. The load balancer stops sending new connections after the probe's threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drainer.core import Drain, Restore
from drainer.errors import ActionError
from drainer.safefile import UnsafeFileError, ensure_dir, write_atomic


class ProbeDrain:
    name = "probe"

    def __init__(self, flag_file: str, *, dry_run: bool) -> None:
        self.flag = Path(flag_file)
        self.dry_run = dry_run

    def drain(self, action: Drain, ctx: Any) -> None:
        if self.dry_run:
            ctx.log.warning("dry-run: would create the out-of-rotation flag", flag=str(self.flag))
            return
        try:  # never through a planted symlink, in a directory no other user can write to
            ensure_dir(self.flag.parent, 0o755)
            write_atomic(self.flag, (",".join(action.event_ids) + "\n").encode(), 0o644)
        except UnsafeFileError as exc:
            raise ActionError("drain", f"cannot create {self.flag}: {exc}") from exc
        except OSError as exc:
            raise ActionError("drain", f"cannot create {self.flag}: {exc.strerror}") from exc
        ctx.log.info("health probe now fails: out-of-rotation flag set", flag=str(self.flag))

    def restore(self, action: Restore, ctx: Any) -> None:
        if self.dry_run:
            ctx.log.warning("dry-run: would remove the out-of-rotation flag", flag=str(self.flag))
            return
        try:
            self.flag.unlink(missing_ok=True)
        except OSError as exc:
            raise ActionError("restore", f"cannot remove {self.flag}: {exc.strerror}") from exc
        ctx.log.info("health probe passes again: out-of-rotation flag removed", flag=str(self.flag))


def in_rotation(flag_file: str) -> bool:
    return not Path(flag_file).exists()
