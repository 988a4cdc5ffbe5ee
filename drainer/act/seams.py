"""The runner's test seams, kept apart from drainer.app.runner so that a command which does not run a check
(`status`, `history`) imports no HTTP client even under the tests' entry point."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from drainer.act.actuator import Actuator

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _no_checkpoint(_: str) -> None:
    return None


def _spread(seconds: float) -> None:
    if seconds > 0:
        time.sleep(random.uniform(0, seconds))  # noqa: S311 - a delay, not a secret  # nosec B311


class Seams(NamedTuple):
    """What a test may replace: the clock, the boot id source and a crash-injection checkpoint.

    Production code uses the defaults; ``checkpoint`` is called with a step name at every step
    boundary so tests can kill the process there.
    """

    now: Callable[[], datetime] = _utcnow
    boot_id_path: str = BOOT_ID_PATH
    checkpoint: Callable[[str], None] = _no_checkpoint
    actuator: Actuator | None = None
    # Sleeps a random time of up to the given seconds (the spread of drains and restores).
    spread: Callable[[float], None] = _spread
