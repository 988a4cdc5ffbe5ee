"""Check outcomes for ``drainer status``: is drainer working on this VM?

A successful check is already recorded as the mtime of ``<state_dir>/last-check`` (see
``runner.touch_last_check``). Failures are recorded here, in two small JSON files beside it:

- ``failing.json`` exists while checks fail: the latest failure, its error and the number of
  consecutive failures (rewritten on every failure);
- ``last-failure.json`` is the last failure of a streak that has ended: the first successful check
  after failures renames ``failing.json`` to it.

So the idle successful path costs one ``rename`` that fails with ENOENT (no write), a failure costs
one small write, and the first success after failures one rename. Nothing here raises: a state
directory that cannot be written is itself the failure being reported elsewhere.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FAILING = "failing.json"
LAST_FAILURE = "last-failure.json"
# A one-shot timer checks every 60 s: three missed checks make a stale answer.
STALE_AFTER_SECONDS = 180.0


def succeeded(state_dir: str) -> None:
    """A check succeeded: end a failure streak if there is one (no write otherwise)."""
    try:
        (Path(state_dir) / FAILING).replace(Path(state_dir) / LAST_FAILURE)
    except OSError:
        return  # FileNotFoundError: no streak to end (the every-minute idle path)


def failed(state_dir: str, error: str, error_type: str, now: float | None = None) -> None:
    """A check failed: record the error and count it in the current streak."""
    from drainer.io.log import redact_text  # noqa: PLC0415 - only on the failure path

    path = Path(state_dir) / FAILING
    at = time.time() if now is None else now
    previous = _read(path) or {}
    consecutive = previous.get("consecutive")
    since = previous.get("since")
    record = {
        "at": _iso(at),
        "error": redact_text(error),
        "error_type": error_type,
        "consecutive": (consecutive if isinstance(consecutive, int) else 0) + 1,
        "since": since if isinstance(since, str) else _iso(at),
    }
    from drainer.io.safefile import write_atomic  # noqa: PLC0415 - only on the failure path
    from drainer.io.trust import check_dir  # noqa: PLC0415

    if check_dir(state_dir) is not None:
        return  # a state dir drainer refuses (the failure itself says why): nothing is written there

    try:  # a random O_EXCL temporary name, never through a planted symlink, mode 0600
        write_atomic(path, (json.dumps(record) + "\n").encode(), 0o600)
    except OSError:
        return


def summary(
    state_dir: str,
    last_ok: datetime | None,
    *,
    disabled: bool,
    poll_interval: float,
    now: float | None = None,
    configuration_errors: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What ``status`` shows: a one-word health and the facts behind it.

    health: ``disabled`` (the kill switch is on), ``failing`` (the last check failed), ``stale`` (no
    successful check for a while: is the timer or the daemon running?), ``unknown`` (no check yet),
    else ``ok``. ``configuration_errors``: what the configuration keeps from working as meant although
    checks succeed (a restore gate that cannot run its health check), listed beside the health.
    """
    current = _read(Path(state_dir) / FAILING)
    last_failure = current or _read(Path(state_dir) / LAST_FAILURE)
    at = time.time() if now is None else now
    stale_after = max(STALE_AFTER_SECONDS, 3 * poll_interval)
    if disabled:
        health = "disabled"
    elif current is not None:
        health = "failing"
    elif last_ok is None:
        health = "unknown"
    elif at - last_ok.timestamp() > stale_after:
        health = "stale"
    else:
        health = "ok"
    consecutive = current.get("consecutive", 1) if current else 0
    return {
        "health": health,
        "state_dir": str(Path(state_dir).absolute()),
        "last_successful_check": _iso(last_ok.timestamp()) if last_ok else None,
        "last_failed_check": (
            {
                "at": last_failure.get("at"),
                "error": last_failure.get("error"),
                "error_type": last_failure.get("error_type"),
            }
            if last_failure
            else None
        ),
        "consecutive_failures": consecutive if isinstance(consecutive, int) else 1,
        "failing_since": current.get("since") if current else None,
        "configuration_errors": list(configuration_errors),
    }


def _read(path: Path) -> dict[str, Any] | None:
    """The record at ``path``: never through a symlink (what it points to is not drainer's)."""
    import os  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        data = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
