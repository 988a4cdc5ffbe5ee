"""sshd-style StrictModes for files drainer trusts: the config file and the hooks it runs."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path


def unsafe_reason(path: Path) -> str | None:
    """Why ``path`` must not be trusted, or None.

    Refused: group- or world-writable, or owned by a user other than root and the user drainer runs
    as. (Windows: ACLs are not modelled here; nothing is refused.)
    """
    if sys.platform == "win32":  # pragma: no cover - Windows only
        return None
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"
    if info.st_uid not in (0, os.geteuid()):
        return f"{path} is owned by uid {info.st_uid}, neither root nor the user drainer runs as"
    if stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX:
        return None  # a sticky directory (/tmp): others cannot replace what we own in it
    if info.st_mode & stat.S_IWOTH:
        return f"{path} is world-writable (mode {stat.S_IMODE(info.st_mode):04o})"
    if info.st_mode & stat.S_IWGRP:
        return f"{path} is group-writable (mode {stat.S_IMODE(info.st_mode):04o})"
    return None
