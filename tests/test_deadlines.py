"""Deadlines bound the whole exchange, not each read.

An answer that drips one byte at a time, each byte well within the read timeout, never times out a
single read: only a deadline on the whole exchange (connect, send, every read) ends it. These tests
run ``drainer check`` through the CLI against such answers and bound how long it takes, and so how
long it holds the run lock every later run and the daemon need:

- IMDS: a small loopback server in this file answers with a 200-byte body dripped one byte every
  0.5 s (100 s in all), headers at once or dripped too; ``[imds] deadline = 2``;
- ARM: the emulator's drip fault (tests/FAULTS.md) drips the NIC read of a drain;
  ``[azure] deadline = 4``.

Each run must end within its deadline plus a generous margin (process start, the other IMDS call,
a loaded CI machine), with exit 1 and one error line naming the deadline; a second check started when
the first should have ended is not turned away by the lock.

And a refused ``[restore] health_command`` is a configuration error, named by ``config check``, by
the restore gate and by ``status``, instead of a health check that silently fails.
"""

from __future__ import annotations

import json
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from drainer.base.errors import EXIT_ACTION_FAILED, EXIT_LOCKED, EXIT_USAGE
from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent, log_records

IMDS_DEADLINE = 2.0
ARM_DEADLINE = 4.0
DRIP_SECONDS = 0.5  # between two bytes: within every read timeout of the config (1 s IMDS, 30 s ARM)
BODY_BYTES = 200
# Everything a run does besides the exchange that drips: start, the state, the lock, an IMDS call,
# on a shared 2-CPU machine running other tests. Dripped answers take 100 s and more.
MARGIN = 6.0

IMDS_CONFIG = DEFAULT_CONFIG.replace("[imds]\ndeadline = 3.0\n", f"[imds]\ndeadline = {IMDS_DEADLINE}\n")
ARM_CONFIG = DEFAULT_CONFIG.replace("deadline = 20.0", f"deadline = {ARM_DEADLINE}")
assert DEFAULT_CONFIG not in (IMDS_CONFIG, ARM_CONFIG)


class _DripHandler(socketserver.BaseRequestHandler):
    server: _DripServer

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        self.server.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
        body = b'{"DocumentIncarnation": 1, "Events": []}'.ljust(BODY_BYTES)
        header = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        answer = header + body
        at_once = 0 if self.server.drip_headers else len(header)
        try:
            self.request.sendall(answer[:at_once])
            for index in range(at_once, len(answer)):
                self.request.sendall(answer[index : index + 1])
                if self.server.stopping.wait(DRIP_SECONDS):  # the drip's pace, and a prompt stop
                    return
        except OSError:
            return  # the client gave up: its deadline passed


class _DripServer(socketserver.ThreadingTCPServer):
    """IMDS on a bad day: every answer is 200, its body (and with ``drip_headers`` its status line and
    headers too) one byte every DRIP_SECONDS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, drip_headers: bool) -> None:
        super().__init__(("127.0.0.1", 0), _DripHandler)
        self.drip_headers = drip_headers
        self.stopping = threading.Event()
        self.requests: list[str] = []
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(params=["body", "headers and body"])
def dripping_imds(request: pytest.FixtureRequest) -> Iterator[_DripServer]:
    server = _DripServer(drip_headers=request.param != "body")
    try:
        yield server
    finally:
        server.stop()


class _Run:
    """One ``drainer check`` in a thread (so a second can start while it may still hold the lock)."""

    def __init__(self, agent: Agent, env: dict[str, str]) -> None:
        self.done: subprocess.CompletedProcess[str] | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(agent, env), daemon=True)
        self._thread.start()

    def _run(self, agent: Agent, env: dict[str, str]) -> None:
        started = time.monotonic()
        # Far beyond the bound: an old drainer drips through the whole answer (or the test ends it).
        self.done = agent.run("check", timeout=300, **env)
        self.seconds = time.monotonic() - started

    def ended_within(self, seconds: float) -> bool:
        self._thread.join(timeout=seconds)
        return not self._thread.is_alive()

    def finish(self) -> None:
        self._thread.join(timeout=60)


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    errors = [r for r in log_records(done.stderr) if r["level"] == "error"]
    assert len(errors) == 1, done.stderr[-3000:]
    return json.dumps(errors[0])


def _checks_against(agent: Agent, env: dict[str, str], deadline: float, stop: Any) -> tuple[_Run, Any]:
    """A check, then a second one started when the first should have ended. Returns the first and
    the second's CompletedProcess (or the TimeoutExpired that stopped it). ``stop`` ends the drip
    (an old drainer would hold on for minutes)."""
    bound = deadline + MARGIN
    first = _Run(agent, env)
    try:
        first_ended = first.ended_within(bound)
        started = time.monotonic()
        try:
            second: Any = agent.run("check", timeout=bound, **env)
        except subprocess.TimeoutExpired as exc:
            second = exc
        second_seconds = time.monotonic() - started
    finally:
        stop()
        first.finish()
    assert first_ended, f"the first check still ran {bound:g}s after it started (deadline {deadline:g}s)"
    assert first.done is not None
    assert first.seconds <= bound, first.seconds
    assert not isinstance(second, subprocess.TimeoutExpired), f"the second check ran past {bound:g}s"
    assert second.returncode != EXIT_LOCKED, f"the second check was turned away by the lock: {second.stderr}"
    assert second_seconds <= bound, second_seconds
    return first, second


def test_a_dripping_imds_answer_ends_the_check_at_the_imds_deadline(
    agent: Agent, dripping_imds: _DripServer
) -> None:
    # The VM's identity is cached first (the run then asks only for scheduled events), with time to
    # spare: the machine may be busy, and this run is not what is measured.
    agent.config_text = DEFAULT_CONFIG.replace("[imds]\ndeadline = 3.0\n", "[imds]\ndeadline = 30.0\n")
    assert agent.check().returncode == 0
    agent.config_text = IMDS_CONFIG
    env = {"DRAINER_IMDS_ENDPOINT": f"{dripping_imds.url}/vm/web-0"}
    first, second = _checks_against(agent, env, IMDS_DEADLINE, dripping_imds.stop)
    assert dripping_imds.requests and all("/metadata/scheduledevents" in r for r in dripping_imds.requests)
    for done in (first.done, second):
        assert done is not None
        assert "Traceback" not in done.stderr
        assert done.returncode == EXIT_ACTION_FAILED, done.stderr[-3000:]
        error = _one_error(done)
        assert f"did not complete within the {IMDS_DEADLINE:g} s deadline" in error, error
    status = agent.status()
    assert status["health"] == "failing"
    assert "deadline" in status["last_failed_check"]["error"]
    assert status["vm"]["drain_state"] == "in_rotation"


@pytest.fixture
def pool(control: EmulatorControl) -> EmulatorControl:
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
    return control


def test_a_dripping_arm_answer_fails_the_drain_at_the_azure_deadline(
    agent: Agent, pool: EmulatorControl
) -> None:
    agent.config_text = ARM_CONFIG
    assert agent.check().returncode == 0
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    # Every read of the VM's NIC drips: the drain cannot even start its write.
    pool.drip("networkInterfaces/web-0-nic$", DRIP_SECONDS, method="GET", count=1_000)
    first, second = _checks_against(agent, {}, ARM_DEADLINE, pool.clear_faults)
    for done in (first.done, second):
        assert done is not None
        assert "Traceback" not in done.stderr
        assert done.returncode == EXIT_ACTION_FAILED, done.stderr[-3000:]
        error = _one_error(done)
        assert "drain failed; retried on the next run" in error, error
        assert f"did not complete within the {ARM_DEADLINE:g} s deadline" in error, error
    vm = agent.status()["vm"]
    assert vm["drain_state"] == "draining"  # recorded as failed, pools untouched
    assert "deadline" in vm["last_error"]
    assert pool.nic_pools("web-0-nic")
    # The drip is gone (cleared above): the next run completes the drain.
    done = agent.check()
    assert done.returncode == 0, done.stderr[-3000:]
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert pool.nic_pools("web-0-nic") == []


# -- a refused health command ------------------------------------------------------------------


def _not_executable(agent: Agent) -> str:
    path = agent.tmp / "bin" / "check-health"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o644)
    return str(path)


REFUSED = {
    "missing program": lambda agent: "no-such-health-check",
    "missing path": lambda agent: str(agent.tmp / "nowhere" / "check-health"),
    "not executable": _not_executable,
}


@pytest.mark.parametrize("why", list(REFUSED))
def test_config_check_names_a_refused_health_command(agent: Agent, why: str) -> None:
    program = REFUSED[why](agent)
    agent.config_text = DEFAULT_CONFIG + f'\n[restore]\nhealth_command = ["{program}", "--quick"]\n'
    checked = agent.run("config", "check")
    assert checked.returncode == EXIT_USAGE, checked.stderr
    lines = [line for line in checked.stderr.splitlines() if line.startswith("drainer: refused:")]
    named = [line for line in lines if f"restore.health_command {program}:" in line]
    assert named, checked.stderr
    assert "the restore gate cannot check health" in named[0]  # and what that means


def test_a_refused_health_command_is_a_configuration_error_at_run_time(
    agent: Agent, pool: EmulatorControl
) -> None:
    program = str(agent.tmp / "nowhere" / "check-health")
    agent.config_text = DEFAULT_CONFIG + (
        f'\n[restore]\nhealth_command = ["{program}"]\nhealth_timeout = 3600\n'
    )
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "drained"
    pool.remove(event_id)
    done = agent.check()
    records = log_records(done.stderr)
    refused = [r for r in records if r.get("key") == "restore.health_command"]
    assert len(refused) == 1, done.stderr
    assert refused[0]["level"] == "error"
    assert "configuration error" in refused[0]["event"], refused[0]
    assert refused[0]["command"] == [program]
    assert "nowhere: cannot stat" in refused[0]["reason"]
    assert not any(r["event"] == "restore health check" for r in records)  # never run, never "unhealthy"
    # It waits, within health_timeout, as for a check that does not pass (see drainer/act/health.py).
    status = agent.status()
    assert status["vm"]["drain_state"] == "restoring"
    assert any("restore.health_command" in e and program in e for e in status["configuration_errors"]), status
    text = agent.run("status")
    assert f"configuration error: restore.health_command {program}" in text.stdout, text.stdout
    # Fixed: the next run checks health and puts the VM back.
    agent.config_text = DEFAULT_CONFIG + '\n[restore]\nhealth_command = ["true"]\nhealth_timeout = 3600\n'
    assert agent.check().returncode == 0
    status = agent.status()
    assert status["vm"]["in_rotation"] is True
    assert status["configuration_errors"] == []


def test_status_lists_no_configuration_error_for_a_usable_health_command(agent: Agent) -> None:
    agent.config_text = DEFAULT_CONFIG + '\n[restore]\nhealth_command = ["true"]\n'
    assert agent.check().returncode == 0
    assert agent.status()["configuration_errors"] == []
    assert "configuration error" not in agent.run("status").stdout
