"""The daemon's HTTP side under attack (issue 12, item 1), through the public interface: the daemon as
a subprocess, its ports over TCP, the emulator over HTTP."""

from __future__ import annotations

import contextlib
import http.client
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import ENTRY, Agent
from tests.test_daemon import Daemon, daemon, daemon_config, free_port, probe_section, wait_until

__all__ = ["daemon"]  # the fixture, shared with tests/test_daemon.py

IDLE = 1100  # per port


def get(port: int, path: str, source: str = "127.0.0.2") -> int:
    """GET from another loopback address (as the load balancer's probe comes from its own host);
    0 when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@contextlib.contextmanager
def idle_connections(ports: list[int], count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections to each port that never send a byte."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count * len(ports) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            stalled = 0
            for _ in range(count):
                s = socket.socket()
                s.settimeout(1.0)
                sockets.append(s)
                try:
                    s.connect(("127.0.0.1", port))
                    stalled = 0
                except OSError:
                    stalled += 1
                    if stalled == 10:  # the daemon stopped taking connections: that is the attack
                        break
        yield sockets
    finally:
        for s in sockets:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def still_open(s: socket.socket) -> bool:
    """Connected and not closed by the daemon."""
    s.setblocking(False)
    try:
        s.getpeername()
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_idle_connections_to_both_ports_do_not_stop_a_drain(
    agent: Agent, control: EmulatorControl, daemon: Daemon
) -> None:
    metrics_port, probe_port = free_port(), free_port()
    flag = agent.tmp / "run" / "out-of-rotation"
    daemon_config(
        agent,
        metrics_port,
        probe_section(probe_port, flag),
    )
    daemon.start()
    assert daemon.process is not None
    # A usual descriptor limit, as the issue measured it (the test process needs more itself).
    resource.prlimit(daemon.process.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    wait_until(lambda: get(probe_port, "/ready") == 200, what="ready")
    wait_until(lambda: get(metrics_port, "/healthz") == 200, what="healthy")
    with idle_connections([probe_port, metrics_port], IDLE) as sockets:
        assert len(sockets) == 2 * IDLE  # every connection was taken (none stalled)
        held_fds = descriptors(daemon.process.pid)
        event_id = control.schedule("Reboot", ["web-0"])
        # The drain happens, and the probe source still gets its answer while the flood is held.
        wait_until(flag.exists, timeout=30, what="the drain")
        wait_until(lambda: get(probe_port, "/ready") == 503, timeout=10, what="the probe says drained")
        held = sum(1 for s in sockets if still_open(s))
        print(f"idle connections: {len(sockets)}, held: {held}, daemon descriptors: {held_fds}")
        assert held_fds < 200  # bounded: the drain has the rest of its 1,024
        assert held <= 2 * 32  # what the daemon keeps open at most: the rest were closed at once
        assert get(metrics_port, "/healthz") == 200
        assert agent.status()["vm"]["drain_state"] == "drained"
    control.remove(event_id)
    wait_until(lambda: get(probe_port, "/ready") == 200, what="back in rotation")
    assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "Traceback" not in log
    assert "Too many open files" not in log


def test_idle_connections_are_dropped_after_their_timeout(
    agent: Agent, control: EmulatorControl, daemon: Daemon
) -> None:
    metrics_port = free_port()
    daemon_config(agent, metrics_port)
    daemon.start()
    wait_until(lambda: get(metrics_port, "/healthz") == 200, what="healthy")
    with idle_connections([metrics_port], 8) as sockets:
        wait_until(lambda: all(still_open(s) for s in sockets), what="the connections to be held")
        wait_until(lambda: not any(still_open(s) for s in sockets), timeout=30, what="idle ones dropped")
    assert daemon.stop() == 0, daemon.log()


def test_the_probe_port_serves_readiness_only(agent: Agent, control: EmulatorControl, daemon: Daemon) -> None:
    metrics_port, probe_port = free_port(), free_port()
    daemon_config(
        agent,
        metrics_port,
        probe_section(probe_port, agent.tmp / "flag"),
    )
    daemon.start()
    wait_until(lambda: "daemon started" in daemon.log(), what="the daemon to start")
    wait_until(lambda: get(probe_port, "/ready") == 200, what="ready")
    assert get(probe_port, "/metrics") == 404
    assert get(probe_port, "/healthz") == 404
    assert get(metrics_port, "/metrics") == 200
    assert get(metrics_port, "/ready") == 404
    assert daemon.stop() == 0, daemon.log()


def test_a_taken_metrics_port_never_stops_the_drain(
    agent: Agent, control: EmulatorControl, daemon: Daemon
) -> None:
    """A local user squatting the metrics port: the daemon says so once and drains anyway."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon_config(agent, taken.getsockname()[1])
        control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
        daemon.start()
        control.schedule("Reboot", ["web-0"])
        wait_until(lambda: control.nic_pools("web-0-nic") == [], what="the drain")
        assert "metrics are not served" in daemon.log()
        assert daemon.stop() == 0


@pytest.mark.parametrize("key", ["probe"])
def test_a_taken_port_is_one_line_and_exit_2(agent: Agent, control: EmulatorControl, key: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics_port = port if key == "metrics" else free_port()
        extra = ""
        if key == "probe":
            extra = f'\n[drain]\nmethod = "probe"\n\n[probe]\naddress = "127.0.0.1:{port}"\n'
            extra += f'flag_file = "{agent.tmp / "flag"}"\n'
        daemon_config(agent, metrics_port, extra)
        done = subprocess.run(
            [sys.executable, str(ENTRY), "run"],
            env=agent.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{key}.address" in lines[0]
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in done.stderr
