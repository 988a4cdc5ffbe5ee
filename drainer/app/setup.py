"""``drainer setup``: what a pip or pipx install lacks beside the package, written for *this*
installation's drainer and said line by line: the systemd units (the daemon, its two socket units,
the one-shot service and its timer), a cron line, or the example configuration.

The units are the very files the .deb ships (``packaging/systemd/``, carried in the wheel as
``drainer/data/systemd``) with one change: ``ExecStart`` runs this drainer instead of the package's
``/opt/drainer/bin/drainer``. Nothing is enabled or started here: the next commands are printed.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files
from pathlib import Path

from drainer.base.errors import EXIT_OK, ConfigError
from drainer.io.safefile import UnsafeFileError, ensure_dir, write_atomic

PACKAGED = "/opt/drainer/bin/drainer"
UNITS = (
    "drainer-probe.socket",
    "drainer-metrics.socket",
    "drainer.service",
    "drainer-check.service",
    "drainer-check.timer",
)
DEFAULTS = {
    "systemd": "/etc/systemd/system",
    "cron": "/etc/cron.d/drainer",
    "config": "/etc/drainer/config.toml",
}


def this_drainer() -> str:
    """The command that runs this installation's drainer: the console script beside this interpreter
    when there is one (a venv, pipx), else the interpreter with ``-m drainer``."""
    script = Path(sys.executable).with_name("drainer")
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m drainer"


def _data(*parts: str) -> str:
    return files("drainer").joinpath("data", *parts).read_text(encoding="utf-8")


def _write(path: Path, text: str, mode: int, *, dry_run: bool) -> None:
    """Write ``text`` to ``path`` (its directory checked like drainer's own, never through a symlink).
    Raises ConfigError naming the path when it cannot."""
    if dry_run:
        print(f"would write {path}")
        return
    try:
        ensure_dir(path.parent, 0o755)
        write_atomic(path, text.encode(), mode)
    except (UnsafeFileError, OSError) as exc:
        raise ConfigError(str(path), "", f"cannot write it: {getattr(exc, 'strerror', None) or exc}") from exc
    print(f"wrote {path}")


def setup(kind: str, target: str | None, *, dry_run: bool) -> int:
    """Write what ``kind`` (systemd, cron, config) needs and print the next steps. Raises ConfigError."""
    where = Path(target or DEFAULTS[kind])
    command = this_drainer()
    if kind == "systemd":
        for unit in UNITS:
            text = _data("systemd", unit).replace(PACKAGED, command)
            _write(where / unit, text, 0o644, dry_run=dry_run)
        print(
            "next: systemctl daemon-reload && systemctl enable --now drainer-probe.socket "
            "drainer-metrics.socket drainer.service\n"
            "      (or, one-shot instead of the daemon: systemctl enable --now drainer-check.timer, and "
            "disable the sockets)"
        )
    elif kind == "cron":
        _write(where, _data("cron", "drainer").replace(PACKAGED, command), 0o644, dry_run=dry_run)
        print("next: nothing: cron reads /etc/cron.d by itself (every minute, output to syslog)")
    else:
        if where.exists():
            print(f"kept {where}: it exists (drainer never overwrites a configuration)")
        else:
            _write(where, _data("config.example.toml"), 0o644, dry_run=dry_run)
        print(f"next: edit {where}, then: drainer doctor")
    return EXIT_OK
