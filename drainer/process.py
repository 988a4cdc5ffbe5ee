"""Running an operator's program: argv only (never a shell string), a clean environment, a timeout
that takes down the whole process tree, and a bounded, balanced capture of its output.

POSIX: the child leads a new session (so its own process group); on timeout the group gets SIGTERM,
then SIGKILL after a grace period. Windows: ``taskkill /T /F`` ends the tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, NamedTuple

TRUNCATED = b"\n[... output truncated ...]\n"


class Completed(NamedTuple):
    argv: tuple[str, ...]
    exit_code: int | None  # None: killed after the timeout
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str
    start_error: str = ""  # the program could not be started at all (exec failed)


class _BoundedSink:
    """Keeps the first and the last ``limit // 2`` bytes of a stream: the start says what the program
    set out to do, the end says how it failed."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = False

    def feed(self, chunk: bytes) -> None:
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]
                self.dropped = True

    def text(self) -> str:
        middle = TRUNCATED if self.dropped else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace")


def _pump(stream: IO[bytes], sink: _BoundedSink) -> None:
    with contextlib.suppress(OSError, ValueError):
        for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
            sink.feed(chunk)


def _kill_tree(process: subprocess.Popen[bytes], sig: int) -> None:
    if sys.platform == "win32":  # pragma: no cover - Windows only
        subprocess.run(  # noqa: S603 - fixed argv
            ["taskkill", "/T", "/F", "/PID", str(process.pid)],  # noqa: S607 - taskkill is a system tool
            capture_output=True,
            check=False,
        )
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: bytes,
    timeout: float,
    kill_grace: float,
    output_limit: int,
    cwd: str | None = None,
) -> Completed:
    """Run ``argv`` to completion or until ``timeout``; never raises for the program's own failures."""
    started = time.monotonic()
    try:
        process = subprocess.Popen(  # noqa: S603 - argv from a validated hook path, never a shell
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=sys.platform != "win32",
            close_fds=True,
        )
    except OSError as exc:
        return Completed(tuple(argv), None, False, time.monotonic() - started, "", "", start_error=str(exc))
    sinks = (_BoundedSink(output_limit), _BoundedSink(output_limit))
    assert process.stdout is not None and process.stderr is not None and process.stdin is not None
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, sinks[0]), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, sinks[1]), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    with contextlib.suppress(OSError):  # the program may exit without reading its stdin
        process.stdin.write(stdin)
    with contextlib.suppress(OSError):
        process.stdin.close()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(process, signal.SIGTERM)
        try:
            process.wait(timeout=kill_grace)
        except subprocess.TimeoutExpired:
            _kill_tree(process, getattr(signal, "SIGKILL", signal.SIGTERM))
            process.wait()
    for pump in pumps:
        # A background child the program left running may still hold the pipes: wait only briefly.
        pump.join(timeout=2.0)
    elapsed = time.monotonic() - started
    return Completed(
        argv=tuple(argv),
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        seconds=round(elapsed, 3),
        stdout=sinks[0].text(),
        stderr=sinks[1].text(),
    )
