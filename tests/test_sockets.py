"""Held ports: ``drainer run`` serves the sockets systemd passes (sd_listen_fds, drainer/io/listenfds.py)
and binds by itself only without them, so that the probe and metrics ports stay drainer's while the
daemon is down and no local user can answer the load balancer or monitoring in its place.

The protocol's parsing is tested as a function; the daemon runs under systemd's own activator,
``systemd-socket-activate`` (Debian's ``systemd`` package; no systemd as PID 1 needed), against the
emulator. systemd-socket-activate binds, waits for the first connection and then execs its command
with the sockets, so the daemon is their only holder; for "held while the daemon is down" a small
holder (HOLDER below) plays the part PID 1 plays for a socket unit: it keeps the sockets and starts
``drainer run`` with them again and again.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.io.listenfds import ListenFdsError, Passed, adopt, listen_fds, parse, serves
from tests.conftest import ENTRY, Agent, log_records
from tests.test_daemon import daemon_config, free_port, probe_section, wait_until

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate not installed (apt-get install systemd; .ci/run does)",
)
PID = 4242


# -- the protocol, as a function ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Passed([], "")),
        ({"LISTEN_FDS": "2"}, Passed([], "")),  # no LISTEN_PID: not for us
        (
            {"LISTEN_PID": "4243", "LISTEN_FDS": "1"},
            Passed([], "LISTEN_PID=4243 is another process (this is 4242)"),
        ),
        ({"LISTEN_PID": "4242"}, Passed([], "")),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, Passed([], "")),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, Passed([(3, "unknown"), (4, "unknown")], "")),
        (
            {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "probe:metrics"},
            Passed([(3, "probe"), (4, "metrics")], ""),
        ),
        (
            {"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "probe:probe:"},
            Passed([(3, "probe"), (4, "probe"), (5, "unknown")], ""),
        ),
    ],
)
def test_parse(env: dict[str, str], expected: Passed) -> None:
    assert parse(env, PID) == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "LISTEN_PID"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "probe:metrics"}, "LISTEN_FDNAMES"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "probe"}, "LISTEN_FDNAMES"),
    ],
)
def test_parse_refuses_malformed_variables(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ListenFdsError) as raised:
        parse(env, PID)
    assert raised.value.variable == variable and raised.value.exit_code == 2


def test_the_variables_are_removed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read once, then gone: children (hooks, anything they start) do not take them for theirs."""
    for env in ({"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "probe"}, {"LISTEN_PID": "x"}):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        if env["LISTEN_PID"] == "1":  # another process's
            assert listen_fds() == ({}, f"LISTEN_PID=1 is another process (this is {os.getpid()})")
        else:  # malformed: refused, and removed all the same
            with pytest.raises(ListenFdsError):
                listen_fds()
        assert not set(env) & set(os.environ)
        child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
        assert "LISTEN_" not in child


def test_adopt_takes_a_listening_stream_socket_and_closes_it_on_exec() -> None:
    with socket.socket() as original:
        original.bind(("127.0.0.1", 0))
        original.listen()
        fd = os.dup(original.fileno())
        os.set_inheritable(fd, True)  # as systemd passes it
        adopted = adopt(fd, "probe")
        try:
            assert adopted.fileno() == fd and not os.get_inheritable(fd)
            assert adopted.getsockname() == original.getsockname()
            assert adopted.gettimeout() is None  # blocking, as socketserver binds its own
            assert serves(adopted, ("127.0.0.1", original.getsockname()[1]))
            assert not serves(adopted, ("127.0.0.1", original.getsockname()[1] + 1))
            assert not serves(adopted, ("127.0.0.2", original.getsockname()[1]))
            assert not serves(adopted, ("0.0.0.0", original.getsockname()[1]))
        finally:
            adopted.close()


def _not_listening() -> socket.socket:
    unlistened = socket.socket()
    unlistened.bind(("127.0.0.1", 0))
    return unlistened


@pytest.mark.parametrize(
    "make",
    [
        _not_listening,
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
    ],
    ids=["not listening", "datagram", "unix"],
)
def test_adopt_refuses_what_is_not_a_listening_tcp_socket(make: Callable[[], socket.socket]) -> None:
    with make() as other:
        with pytest.raises(ListenFdsError, match="not a listening TCP socket"):
            adopt(other.fileno(), "probe")
        assert other.fileno() != -1  # not closed: it was never ours
    read, write = os.pipe()
    try:
        with pytest.raises(ListenFdsError, match=f"descriptor {read} \\(metrics\\)"):
            adopt(read, "metrics")
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_a_dual_stack_socket_serves_the_ipv4_wildcard() -> None:
    """``ListenStream=8088`` with ``BindIPv6Only=both`` serves ``0.0.0.0:8088`` (bound, never listening)."""
    for v6only, expected in ((0, True), (1, False)):
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            pytest.skip("IPv6 disabled in this kernel")
        with sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            sock.bind(("::", 0))
            port = sock.getsockname()[1]
            assert serves(sock, ("0.0.0.0", port)) is expected
            assert serves(sock, ("::", port))
            assert not serves(sock, ("127.0.0.1", port))


# -- the daemon under systemd-socket-activate ----------------------------------------------------


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    """GET ``url``: (status, body), or (0, "") when nothing answers (refused, timed out)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


class Activated:
    """``systemd-socket-activate -l 127.0.0.1:PORT ... [--fdname=NAMES] -- ARGV`` with the agent's
    environment (the activator passes on only what -E names)."""

    def __init__(self, agent: Agent, tmp: Path) -> None:
        self.agent = agent
        self.log = tmp / f"activated-{len(list(tmp.glob('activated-*')))}.log"
        self.process: subprocess.Popen[str] | None = None

    def start(self, ports: list[int], names: list[str] | None, argv: list[str]) -> None:
        assert SOCKET_ACTIVATE is not None
        command = [SOCKET_ACTIVATE]
        for port in ports:
            command += ["-l", f"127.0.0.1:{port}"]
        if names is not None:
            command.append(f"--fdname={':'.join(names)}")
        for key, value in self.agent.env().items():
            command += ["-E", f"{key}={value}"]
        with self.log.open("w") as err:
            self.process = subprocess.Popen(
                [*command, "--", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # the activator, what it runs and that one's children
            )
        # It binds, says so, then waits for a first connection before it runs ARGV.
        wait_until(lambda: self.text().count("Listening on") == len(ports), what="the activator's sockets")

    def text(self) -> str:
        return self.log.read_text()

    def records(self, message: str) -> list[dict[str, object]]:
        return [r for r in log_records(self.text()) if r.get("event") == message]

    def command(self, line: str) -> str:
        """A command to the holder (HOLDER), and its answer."""
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe:
                    pipe.close()


@pytest.fixture
def activated(agent: Agent, tmp_path: Path) -> Iterator[Activated]:
    running = Activated(agent, tmp_path)
    yield running
    running.kill()


DRAINER = [sys.executable, str(ENTRY), "run"]

# PID 1's part for a socket unit, for the test: keeps the sockets systemd-socket-activate passed it
# and runs the command after it with them (LISTEN_PID set to the child's own pid) on each "start"
# line, sends SIGTERM and reaps it on "stop". stdout is the conversation with the test.
HOLDER = r"""
import os, signal, sys
assert int(os.environ.pop("LISTEN_PID")) == os.getpid()
count, names = os.environ.pop("LISTEN_FDS"), os.environ.pop("LISTEN_FDNAMES", None)
child = 0
for line in sys.stdin:
    if line.strip() == "start":
        child = os.fork()
        if child == 0:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS=count)
            if names is not None:
                env["LISTEN_FDNAMES"] = names
            os.execve(sys.argv[1], sys.argv[1:], env)
        print("started", flush=True)
    elif line.strip() == "stop":
        os.kill(child, signal.SIGTERM)
        print("stopped", os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
"""


@needs_socket_activate
def test_the_daemon_serves_the_sockets_systemd_passes(
    agent: Agent, control: EmulatorControl, activated: Activated
) -> None:
    """The unit is the source of truth: its sockets are served, on other ports than the config's,
    with a warning that names both; the configured ports stay closed."""
    probe_port, metrics_port = free_port(), free_port()
    configured_probe, configured_metrics = free_port(), free_port()
    flag = agent.tmp / "out-of-rotation"
    daemon_config(agent, configured_metrics, probe_section(configured_probe, flag))
    activated.start([probe_port, metrics_port], ["probe", "metrics"], DRAINER)
    # The first connection makes the activator run drainer; it is answered once drainer serves.
    assert get(f"http://127.0.0.1:{probe_port}/ready") == (200, "in rotation\n"), activated.text()
    wait_until(lambda: get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200, what="healthz")
    assert get(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200
    assert refused(configured_probe) and refused(configured_metrics)
    started = activated.records("daemon started")
    assert started and started[0]["listening"] == [
        f"metrics 127.0.0.1:{metrics_port} (from systemd)",
        f"probe 127.0.0.1:{probe_port} (from systemd)",
    ]
    warned = {
        (r["role"], r["socket"], r["configured"])
        for r in activated.records(
            "the socket systemd passed is not on the configured address: serving on the socket "
            "(the socket unit decides; make the two agree)"
        )
    }
    assert warned == {
        ("probe", f"127.0.0.1:{probe_port}", f"127.0.0.1:{configured_probe}"),
        ("metrics", f"127.0.0.1:{metrics_port}", f"127.0.0.1:{configured_metrics}"),
    }
    # The drain fails the probe on the passed socket.
    control.schedule("Reboot", ["web-0"])
    wait_until(lambda: get(f"http://127.0.0.1:{probe_port}/ready")[0] == 503, what="the drain")
    assert activated.process is not None
    activated.process.send_signal(signal.SIGTERM)
    assert activated.process.wait(timeout=30) == 0, activated.text()


@needs_socket_activate
def test_the_port_stays_held_while_the_daemon_is_down(agent: Agent, activated: Activated) -> None:
    """What a socket unit does across a restart, an upgrade or a crash: while drainer is down another
    process cannot bind the port, a probe that connects then waits in the queue, and the restarted
    daemon answers it on the same socket."""
    probe_port, metrics_port = free_port(), free_port()
    flag = agent.tmp / "out-of-rotation"
    daemon_config(agent, metrics_port, probe_section(probe_port, flag))
    activated.start(
        [probe_port, metrics_port], ["probe", "metrics"], [sys.executable, "-c", HOLDER, *DRAINER]
    )
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(get, f"http://127.0.0.1:{probe_port}/ready")  # makes the activator run HOLDER
        assert activated.command("start") == "started"
        assert first.result() == (200, "in rotation\n"), activated.text()
    # A successful check: the daemon runs its loop, so SIGTERM is a clean stop.
    wait_until(lambda: get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200, what="healthz")
    assert activated.command("stop") == "stopped 0", activated.text()

    # drainer is down. A squatter's bind fails, whatever socket options it tries.
    for port in (probe_port, metrics_port):
        for option in (None, socket.SO_REUSEADDR, socket.SO_REUSEPORT):
            with socket.socket() as squatter:
                if option is not None:
                    squatter.setsockopt(socket.SOL_SOCKET, option, 1)
                with pytest.raises(OSError) as taken:
                    squatter.bind(("127.0.0.1", port))
                assert taken.value.errno == errno.EADDRINUSE, (port, option)
    # The load balancer's probe connects (the kernel queues it on the held socket) and asks...
    with socket.create_connection(("127.0.0.1", probe_port), timeout=30) as waiting:
        waiting.sendall(b"GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        # ... and the restarted daemon answers on the same socket.
        assert activated.command("start") == "started"
        answer = waiting.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"in rotation\n"), answer
    wait_until(lambda: get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200, what="healthz")
    assert activated.command("stop") == "stopped 0", activated.text()
    starts = activated.records("daemon started")
    assert [r["listening"] for r in starts] == 2 * [
        [f"metrics 127.0.0.1:{metrics_port} (from systemd)", f"probe 127.0.0.1:{probe_port} (from systemd)"]
    ]
    assert not activated.records(  # the config and the sockets agree: nothing to warn about
        "the socket systemd passed is not on the configured address: serving on the socket "
        "(the socket unit decides; make the two agree)"
    )
    # The holder gone, the port is free: the same squatter's bind above failed because it was held.
    activated.kill()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the closed connections
        squatter.bind(("127.0.0.1", probe_port))


@needs_socket_activate
def test_unnamed_sockets_are_matched_by_address(agent: Agent, activated: Activated) -> None:
    """Without FileDescriptorName= (names "unknown"): the socket on [probe] address is the probe's;
    one on no configured address is closed with a warning, and metrics are bound as configured."""
    probe_port, stray_port, metrics_port = free_port(), free_port(), free_port()
    daemon_config(agent, metrics_port, probe_section(probe_port, agent.tmp / "flag"))
    activated.start([stray_port, probe_port], None, DRAINER)
    assert get(f"http://127.0.0.1:{probe_port}/ready") == (200, "in rotation\n"), activated.text()
    wait_until(lambda: get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200, what="healthz")
    started = activated.records("daemon started")
    assert started and started[0]["listening"] == [
        f"metrics 127.0.0.1:{metrics_port}",
        f"probe 127.0.0.1:{probe_port} (from systemd)",
    ]
    unused = activated.records(
        "a socket systemd passed is not used: named neither probe nor metrics, and on neither "
        "configured address"
    )
    assert [(r["name"], r["address"]) for r in unused] == [("unknown", f"127.0.0.1:{stray_port}")]


def _run(agent: Agent, script: str) -> subprocess.CompletedProcess[str]:
    """``drainer run`` started by ``sh -c SCRIPT`` (the script ends in exec "$@")."""
    return subprocess.run(
        ["/bin/sh", "-c", script, "sh", *DRAINER],
        env=agent.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            'export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=probe:metrics; exec "$@"',
            "socket activation: LISTEN_FDNAMES: 2 names ('probe:metrics') for LISTEN_FDS=1 descriptors",
        ),
        (
            'exec 3</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=probe; exec "$@"',
            "socket activation: LISTEN_FDS: descriptor 3 (probe): Socket operation on non-socket",
        ),
    ],
    ids=["names", "not a socket"],
)
def test_unusable_passed_sockets_are_one_line_and_exit_2(agent: Agent, script: str, message: str) -> None:
    daemon_config(agent, free_port())
    done = _run(agent, script)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"drainer: {message}"


def test_variables_for_another_process_are_ignored_and_said(agent: Agent) -> None:
    """LISTEN_PID of the shell, which then forks drainer: not drainer's sockets; it binds its own."""
    metrics_port = free_port()
    daemon_config(agent, metrics_port)
    with subprocess.Popen(
        ["/bin/sh", "-c", 'export LISTEN_PID=$$ LISTEN_FDS=1; "$@"; true', "sh", *DRAINER],
        env=agent.env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as shell:
        try:
            wait_until(lambda: get(f"http://127.0.0.1:{metrics_port}/healthz", 5)[0] == 200, what="healthz")
        finally:
            os.killpg(shell.pid, signal.SIGTERM)
            _, stderr = shell.communicate(timeout=30)
    ignored = [r for r in log_records(stderr) if r.get("event", "").startswith("socket activation variables")]
    assert len(ignored) == 1 and str(ignored[0]["reason"]).startswith("LISTEN_PID="), stderr


@pytest.mark.parametrize("role", ["probe", "metrics"])
def test_a_taken_port_says_who_reads_the_squatters_answers(agent: Agent, role: str) -> None:
    """Without a passed socket the daemon binds; a taken port says so, and what holds it from boot."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        flag = agent.tmp / "flag"
        if role == "probe":
            daemon_config(agent, free_port(), probe_section(port, flag))
            done = _run(agent, 'exec "$@"')
            assert done.returncode == 2, done.stderr
            line = done.stderr.strip()
            assert "\n" not in line and "Traceback" not in line
        else:
            daemon_config(agent, port)
            log = agent.tmp / "daemon.log"
            with log.open("w") as err, subprocess.Popen(DRAINER, env=agent.env(), stderr=err) as daemon:
                try:  # metrics are for people: the daemon runs on without them
                    wait_until(lambda: "metrics are not served" in log.read_text(), what="the error")
                    assert daemon.poll() is None
                finally:
                    daemon.send_signal(signal.SIGTERM)
                    daemon.wait(timeout=30)
            line = next(ln for ln in log.read_text().splitlines() if "metrics are not served" in ln)
    assert f"{role}.address: cannot listen on 127.0.0.1:{port}: another process holds port {port}" in line
    reader = "the load balancer's health probe" if role == "probe" else "monitoring (/healthz, /metrics)"
    assert f"{reader} reads its answers in drainer's place" in line
    assert f"ss -ltnp 'sport = :{port}'" in line and f"drainer-{role}.socket holds the port" in line
