"""The ARM token and ARM answers (issue 12, item 7 and the body cap of item 8), through the CLI
against the emulator: a local listener records whatever reaches it."""

from __future__ import annotations

import contextlib
import json
import resource
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import Agent, log_records


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, huge: int = 0, echo: bool = False) -> None:
        self.seen: list[dict[str, Any]] = []
        self.huge = huge  # >0: answer every request with this many bytes (chunked)
        self.echo = echo  # answer 400 with an error that echoes the request's Authorization header
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _any(self) -> None:
        self.server.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with contextlib.suppress(OSError):
            if self.server.huge:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b" " * (1 << 20)
                for _ in range(self.server.huge >> 20):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
                return
            body = b'{"status": "Succeeded"}'
            if self.server.echo:
                echoed = self.headers.get("Authorization", "")
                body = json.dumps({"error": {"code": "BadRequest", "message": f"got {echoed}"}}).encode()
            self.send_response(400 if self.server.echo else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._any()

    def do_PUT(self) -> None:
        self._any()

    def do_POST(self) -> None:
        self._any()


@contextlib.contextmanager
def recorder(huge: int = 0, echo: bool = False) -> Iterator[Recorder]:
    server = Recorder(huge, echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _emulator_port(agent: Agent) -> int:
    return int(agent.emulator.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{listener}\\@127.0.0.1:{arm}",  # urlsplit: port {arm}; urllib3: {listener}
        "http://127.0.0.1:{listener}\\@localhost:{arm}/",
        "http://user@127.0.0.1:{listener}",
    ],
)
def test_an_endpoint_with_userinfo_or_a_backslash_is_refused_and_gets_no_token(
    agent: Agent, pool: EmulatorControl, template: str
) -> None:
    pool.schedule("Reboot", ["web-0"])
    with recorder() as listener:
        endpoint = template.format(listener=listener.port, arm=_emulator_port(agent))
        done = agent.check(DRAINER_ARM_ENDPOINT=endpoint)
        checked = agent.run("config", "check", DRAINER_ARM_ENDPOINT=endpoint)
    assert listener.seen == []
    assert done.returncode == 2, done.stderr
    assert "$DRAINER_ARM_ENDPOINT" in done.stderr
    assert "userinfo" in done.stderr or "backslash" in done.stderr
    assert checked.returncode == 2


def test_a_foreign_operation_url_never_receives_the_token(agent: Agent, pool: EmulatorControl) -> None:
    pool.schedule("Reboot", ["web-0"])
    with recorder() as listener:
        pool.lro_host(f"127.0.0.1:{listener.port}")
        done = agent.check()
    assert listener.seen == [], listener.seen  # not even the request, let alone its Authorization
    assert done.returncode == 1, done.stderr
    vm = agent.status()["vm"]
    assert "refused to send the ARM token" in vm["last_error"]
    assert f"127.0.0.1:{listener.port}" in vm["last_error"]
    # The NIC was written by the initial PUT (ARM accepted it), so the run records the drain as failed
    # only because its outcome could not be polled; the next run reads the NIC and converges.
    pool.lro_host(None)
    assert agent.check().returncode == 0
    assert "web-0-nic" not in next(iter(pool.membership().values()))


def test_a_huge_arm_answer_is_refused_without_holding_it(agent: Agent, pool: EmulatorControl) -> None:
    pool.schedule("Reboot", ["web-0"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with recorder(huge=150 << 20) as fake_arm:
        done = agent.check(DRAINER_ARM_ENDPOINT=f"http://127.0.0.1:{fake_arm.port}")
        assert fake_arm.seen, "the run reached the fake ARM"
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert done.returncode == 1, done.stderr
    errors = [r for r in log_records(done.stderr) if "larger than the" in str(r.get("error", ""))]
    assert errors, done.stderr
    # ru_maxrss of children is the largest child so far: this run's, unless an earlier one was larger.
    assert peak_kib == before or peak_kib < 200 * 1024, peak_kib
