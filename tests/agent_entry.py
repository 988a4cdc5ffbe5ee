"""Test-only entry point: runs the real CLI with test seams taken from the environment.

TEST_CRASH_AT=<step>     os._exit(137) at that step boundary (see drainer.app.runner)
TEST_RAISE_AT=<step>     raise an unexpected RuntimeError there (a bug, as the CLI sees it)
TEST_BOOT_ID_FILE=<path> read the boot id from this file instead of /proc
TEST_MODULES_OUT=<path>  write the names of every imported module there at exit
TEST_CLOCK_OFFSET=<s>    the wall clock as seen by the run, shifted by this many seconds
TEST_SPREAD=1            keep the random delay before drains and restores ([fleet] spread_seconds);
                         without it tests do not wait for it

Run as a script, or by the tests' fork server (tests/zygote.py) through ``entry``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from drainer.act.seams import BOOT_ID_PATH, Seams
from drainer.app.cli import BEFORE_EXIT, main

CRASH_EXIT = 137


def _checkpoint(name: str) -> None:
    crash_at = os.environ.get("TEST_CRASH_AT")
    if crash_at == name:
        sys.stderr.flush()
        os._exit(CRASH_EXIT)
    if os.environ.get("TEST_RAISE_AT") == name:
        raise RuntimeError("injected by the test")


def _shifted_now() -> datetime:
    offset = float(os.environ.get("TEST_CLOCK_OFFSET") or 0)
    return datetime.now(timezone.utc) + timedelta(seconds=offset)


def entry(argv: Sequence[str]) -> int:
    seams = Seams(
        checkpoint=_checkpoint,
        boot_id_path=os.environ.get("TEST_BOOT_ID_FILE") or BOOT_ID_PATH,
        now=_shifted_now,
    )
    if os.environ.get("TEST_SPREAD") != "1":
        seams = seams._replace(spread=lambda _: None)
    BEFORE_EXIT[:] = [_modules_out]  # a one-shot action exits promptly, without returning here
    code = main(list(argv), seams=seams)
    _modules_out()
    return code


def _modules_out() -> None:
    modules_out = os.environ.get("TEST_MODULES_OUT")
    if modules_out:
        Path(modules_out).write_text("\n".join(sorted(sys.modules)), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
