"""A fork server for the tests: the real CLI in a fresh process, without paying Python's start-up and
the Azure SDK's imports (about 1.5 s of CPU) on every run.

The tests start hundreds of ``drainer`` processes. This server imports drainer, the Azure SDK and
the rest once, then forks for each run: the child is a new process with its own pid, file
descriptors, environment, state and exit code, running ``tests/agent_entry.py``'s entry point exactly
as ``python tests/agent_entry.py ARGS`` would. What a fork cannot show is a cold start: tests that
look at what a run imports (``TEST_MODULES_OUT``) get a real interpreter (see ``conftest.Agent``).

Protocol, one connection per run over a Unix socket: the client sends one JSON line ``{"argv", "env",
"cwd"}`` with three file descriptors (stdin, stdout, stderr) attached; the server answers
``{"pid": N}`` once the child runs and ``{"status": CODE}`` when it has exited (``-SIGNUM`` when
killed by a signal, like ``subprocess``).

Each connection is served by a forked handler (the server itself stays single-threaded and never
waits for a child, so forking stays safe); the handler forks the run and waits for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRELOAD = (
    "drainer.app.cli",
    "drainer.app.runner",
    "drainer.app.daemon",
    "drainer.act.methods",
    "drainer.io.arm",
    "drainer.act.lb",
    "drainer.act.hooks",
    "drainer.app.report",
    "drainer.io.prom",
    "azure.identity",
    "structlog",
    "sqlite3",
)


def _serve(path: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from tests.agent_entry import entry

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    parent = os.getppid()
    server.settimeout(2.0)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:
                return  # the test process is gone (killed without cleaning up): do not linger
            continue
        conn.setblocking(True)
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _handle(conn, entry)
            finally:
                os._exit(0)
        conn.close()


def _handle(conn: socket.socket, entry: Any) -> None:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = 1
        try:
            code = entry(request["argv"])
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    conn.sendall(json.dumps({"status": code}).encode() + b"\n")


class Zygote:
    """The client side: start the server, run the CLI through it."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "zygote.sock")
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(directory)},
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the test fork server did not start")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Like ``subprocess.run(capture_output=True, text=True)``; raises subprocess.TimeoutExpired."""
        import tempfile

        deadline = time.monotonic() + timeout
        with (
            Path(os.devnull).open("rb") as stdin,
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn,
        ):
            conn.connect(self.path)
            request = {"argv": argv, "env": env, "cwd": cwd or str(Path.cwd())}
            fds = [stdin.fileno(), out.fileno(), err.fileno()]
            socket.send_fds(conn, [json.dumps(request).encode()], fds)
            reader = conn.makefile("rb")
            pid: int | None = None
            try:
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                pid = int(json.loads(reader.readline())["pid"])
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                answer = reader.readline()
            except TimeoutError:
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(argv, timeout) from None
            code = int(json.loads(answer)["status"])
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
        return subprocess.CompletedProcess(argv, code, stdout, stderr)


if __name__ == "__main__":
    _serve(sys.argv[1])
