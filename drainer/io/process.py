"""Running an operator's program: argv only (never a shell string), a clean environment, a timeout
that takes down the whole process tree, and a bounded, balanced capture of its output.

The timeout runs from before the program starts: its stdin is written by a separate thread, so a
program that never reads a large document cannot stall the run.

Linux: drainer makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``, no systemd needed),
so a descendant that leaves the process group (``setsid``, double fork) is re-parented to drainer
instead of init and stays findable. On timeout, the program's process group and every descendant
started since it was (read from /proc: parent links and start times) get SIGTERM, then SIGKILL after
the grace period, repeated until none is left; orphans re-parented to drainer are reaped.
Other POSIX systems: the process group only. Windows: ``taskkill /T /F`` ends the tree that is still
linked by parent ids; a descendant whose parent already exited is not found (a Job object would be
needed, and is not used).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess  # nosec B404
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
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


_subreaper = False
_LINUX = sys.platform.startswith("linux")
_PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h


def _become_subreaper() -> None:
    """Linux: orphaned descendants of our children are re-parented to us, not to init."""
    global _subreaper  # noqa: PLW0603 - a process-wide attribute, set once
    if _subreaper or not _LINUX:
        return
    import ctypes  # noqa: PLC0415 - only when a program is run

    libc = ctypes.CDLL(None, use_errno=True)
    _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


class _Proc(NamedTuple):
    ppid: int
    start: int  # clock ticks after boot
    zombie: bool


def _processes() -> dict[int, _Proc]:
    table: dict[int, _Proc] = {}
    with os.scandir("/proc") as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for entry in pids:
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue  # exited meanwhile
        fields = data[data.rfind(b")") + 2 :].split()
        table[int(entry)] = _Proc(int(fields[1]), int(fields[19]), fields[0] == b"Z")
    return table


def _descendants(root: int, since: int) -> tuple[set[int], dict[int, _Proc]]:
    """``root`` and everything below it, plus the orphans re-parented to us that started at or after
    ``since`` (they came from ``root``'s run) and what is below them."""
    table = _processes()
    me = os.getpid()
    members = {root} if root in table else set()
    members |= {pid for pid, p in table.items() if p.ppid == me and p.start >= since and pid != root}
    grew = True
    while grew:
        found = {pid for pid, p in table.items() if p.ppid in members} - members
        grew = bool(found)
        members |= found
    return members, table


def _start_time(pid: int) -> int:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(data[data.rfind(b")") + 2 :].split()[19])


def _signal_tree(process: subprocess.Popen[bytes], since: int, sig: int) -> int:
    """Send ``sig`` to the program's group and its descendants; reap our orphans. Returns how many
    processes are still alive (not zombies)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
    if not _LINUX:  # pragma: no cover - other POSIX systems: the process group only
        return 0
    members, table = _descendants(process.pid, since)
    alive = 0
    for pid in members:
        if table[pid].zombie:
            if table[pid].ppid == os.getpid() and pid != process.pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            continue
        alive += 1
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return alive


def _kill_tree(process: subprocess.Popen[bytes], since: int, grace: float) -> None:
    """SIGTERM to the whole tree, then SIGKILL after ``grace`` seconds until nothing is left."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        # A fixed argv; taskkill is a system tool (ruff S603/S607, bandit B603/B607).
        subprocess.run(  # noqa: S603  # nosec B603 B607
            ["taskkill", "/T", "/F", "/PID", str(process.pid)],  # noqa: S607 - taskkill is a system tool
            capture_output=True,
            check=False,
        )
        return
    _signal_tree(process, since, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    kill = getattr(signal, "SIGKILL", signal.SIGTERM)
    for _ in range(200):  # a process may fork between one scan and the next: scan again
        if _signal_tree(process, since, kill) == 0:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.02)
    process.wait()


def reap_orphans() -> None:
    """Collect the exit status of descendants re-parented to us that have exited (Linux)."""
    if not (_LINUX and _subreaper):
        return
    me = os.getpid()
    for pid, proc in _processes().items():
        if proc.ppid == me and proc.zombie and pid not in _running:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


_running: set[int] = set()  # programs whose exit status subprocess itself collects


def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to the program's stdin, then close it; gives up when the program is gone."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view[:65536]) :]
    except OSError:
        pass  # the program exited or closed its stdin without reading it all
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: bytes,
    timeout: float,
    kill_grace: float,
    output_limit: int,
    cwd: str | None = None,
    executable_fd: int | None = None,
) -> Completed:
    """Run ``argv`` to completion or until ``timeout``; never raises for the program's own failures.

    ``executable_fd``: an open descriptor of the (checked) program file: that file is what runs, through
    /proc/self/fd on Linux, whatever happens to ``argv[0]`` meanwhile (elsewhere ``argv[0]`` runs).
    """
    started = time.monotonic()  # the timeout covers everything below, starting the program included
    reap_orphans()
    executable = None
    pass_fds: tuple[int, ...] = ()
    if executable_fd is not None:
        from drainer.io.trust import exec_path  # noqa: PLC0415

        executable = exec_path(executable_fd)
        pass_fds = (executable_fd,) if executable else ()
    _become_subreaper()
    try:
        # The argv of a checked program, never a shell (ruff S603, bandit B603).
        process = subprocess.Popen(  # noqa: S603  # nosec B603
            list(argv),
            executable=executable,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=sys.platform != "win32",
            close_fds=True,
            pass_fds=pass_fds,
        )
    except OSError as exc:
        return Completed(tuple(argv), None, False, time.monotonic() - started, "", "", start_error=str(exc))
    _running.add(process.pid)
    since = _start_time(process.pid) if _LINUX else 0
    sinks = (_BoundedSink(output_limit), _BoundedSink(output_limit))
    stdout, stderr, feed = process.stdout, process.stderr, process.stdin
    if stdout is None or stderr is None or feed is None:  # pragma: no cover - all three are PIPE
        raise RuntimeError("the program's pipes are missing")
    stdin_fd = os.dup(feed.fileno())
    feed.close()
    threads = [
        threading.Thread(target=_pump, args=(stdout, sinks[0]), daemon=True),
        threading.Thread(target=_pump, args=(stderr, sinks[1]), daemon=True),
        threading.Thread(target=_feed, args=(stdin_fd, stdin), daemon=True),
    ]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        process.wait(timeout=max(0.0, started + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(process, since, kill_grace)
    finally:
        _running.discard(process.pid)
    for thread in threads:
        # A background child the program left running may still hold the pipes: wait only briefly.
        thread.join(timeout=2.0)
    elapsed = time.monotonic() - started
    return Completed(
        argv=tuple(argv),
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        seconds=round(elapsed, 3),
        stdout=sinks[0].text(),
        stderr=sinks[1].text(),
    )
