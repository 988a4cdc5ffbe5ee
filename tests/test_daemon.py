"""The daemon as a subprocess against the emulator: drain and restore, /metrics, SIGTERM mid-cycle,
restart and continue; the probe method; one-shot textfile metrics; the kill switch."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, ENTRY, Agent

FAMILIES = (
    "drainer_events_seen_total",
    "drainer_drain_state",
    "drainer_actions_total",
    "drainer_action_duration_seconds",
    "drainer_out_of_rotation_seconds",
    "drainer_imds_requests_total",
    "drainer_arm_requests_total",
    "drainer_last_successful_check_timestamp_seconds",
    "drainer_hook_runs_total",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a condition (not a fixed sleep): fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def more_polls(control: EmulatorControl, count: int) -> None:
    """Wait until the daemon has asked IMDS for the scheduled events ``count`` more times."""

    def polls() -> int:
        return sum(1 for r in control.requests() if r["path"] == "/metadata/scheduledevents")

    seen = polls()
    wait_until(lambda: polls() >= seen + count, what=f"{count} more polls")


def fetch(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class Daemon:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.process: subprocess.Popen[str] | None = None
        self.stderr = agent.tmp / f"daemon-{time.monotonic_ns()}.log"

    def start(self) -> None:
        with self.stderr.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(ENTRY), "run"],
                env=self.agent.env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.stderr.read_text()


@pytest.fixture
def daemon(agent: Agent) -> Iterator[Daemon]:
    runner = Daemon(agent)
    yield runner
    if runner.process is not None and runner.process.poll() is None:
        runner.process.kill()
        runner.process.wait()


def _in_pool(control: EmulatorControl) -> bool:
    return "web-0-nic" in next(iter(control.membership().values()))


def daemon_config(agent: Agent, metrics_port: int, extra: str = "") -> None:
    hooks = agent.tmp / "hooks"
    agent.config_text = (
        DEFAULT_CONFIG
        + "\n[daemon]\npoll_interval = 0.2\nstop_timeout = 20\n"
        + f'\n[metrics]\nenabled = true\naddress = "127.0.0.1:{metrics_port}"\n'
        + f'\n[hooks]\ndir = "{hooks}"\n'
        + extra
    )


def probe_section(probe_port: int, flag: Path) -> str:
    """Config for the probe method: readiness at http://127.0.0.1:<probe_port>/ready, this flag file."""
    return (
        f'\n[drain]\nmethod = "probe"\n\n[probe]\naddress = "127.0.0.1:{probe_port}"\n'
        f'path = "/ready"\nflag_file = "{flag}"\n'
    )


def add_hook(agent: Agent, phase: str, name: str, body: str) -> None:
    directory = agent.tmp / "hooks" / phase
    directory.mkdir(parents=True, exist_ok=True)
    (agent.tmp / "hooks").chmod(0o755)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_daemon_drains_restores_and_serves_metrics(
    agent: Agent, pool: EmulatorControl, daemon: Daemon
) -> None:
    port = free_port()
    daemon_config(agent, port)
    add_hook(agent, "post-drain", "10-ok", "exit 0\n")
    daemon.start()
    wait_until(lambda: fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="healthz")
    event_id = pool.schedule("Reboot", ["web-0"])
    wait_until(lambda: not _in_pool(pool), what="the drain")
    pool.remove(event_id)
    wait_until(lambda: _in_pool(pool), what="the restore")
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    wait_until(
        lambda: 'drainer_drain_state{state="in_rotation"} 1.0' in fetch(metrics_url)[1], what="in_rotation"
    )
    # While nothing changes, the daemon's conditional GET gets 304s.
    wait_until(lambda: 'drainer_imds_requests_total{status="304"}' in fetch(metrics_url)[1], what="a 304")
    code, text = fetch(metrics_url)
    assert code == 200
    for family in FAMILIES:
        assert f"# TYPE {family.removesuffix('_total')}" in text, family
    assert 'drainer_actions_total{action="drain",result="ok"} 1.0' in text
    assert 'drainer_actions_total{action="restore",result="ok"} 1.0' in text
    assert 'drainer_out_of_rotation_seconds{event_type="Reboot"}' in text
    assert daemon.stop() == 0
    assert "daemon stopped" in daemon.log()


def test_sigterm_mid_cycle_finishes_the_step_and_a_restart_continues(
    agent: Agent, pool: EmulatorControl, daemon: Daemon
) -> None:
    port = free_port()
    daemon_config(agent, port)
    started = agent.tmp / "hook-started"
    add_hook(agent, "pre-drain", "10-slow", f'touch "{started}"; sleep 2\n')
    daemon.start()
    event_id = pool.schedule("Reboot", ["web-0"])
    wait_until(started.exists, what="the pre-drain hook to start")
    assert daemon.stop() == 0  # the running check (hook, then the drain) is allowed to finish
    assert not _in_pool(pool)
    assert agent.status()["vm"]["drain_state"] == "drained"
    restarted = Daemon(agent)
    restarted.start()
    try:
        pool.remove(event_id)
        wait_until(lambda: _in_pool(pool), what="the restore after the restart")
        assert restarted.stop() == 0
    finally:
        if restarted.process and restarted.process.poll() is None:
            restarted.process.kill()


def test_sigterm_abandons_a_step_that_outlives_stop_timeout_and_a_restart_converges(
    agent: Agent, pool: EmulatorControl, daemon: Daemon
) -> None:
    port = free_port()
    daemon_config(agent, port)
    agent.config_text = agent.config_text.replace("stop_timeout = 20", "stop_timeout = 0.5")
    started = agent.tmp / "hook-started"
    add_hook(agent, "pre-drain", "10-slower", f'touch "{started}"; sleep 30\n')
    daemon.start()
    event_id = pool.schedule("Reboot", ["web-0"])
    wait_until(started.exists, what="the pre-drain hook to start")
    assert daemon.stop(timeout=10) == 0
    assert "abandoning the running check" in daemon.log()
    assert agent.status()["vm"]["drain_state"] == "draining"  # the intent survived
    (agent.tmp / "hooks" / "pre-drain" / "10-slower").unlink()
    restarted = Daemon(agent)
    restarted.start()
    try:
        wait_until(lambda: not _in_pool(pool), what="the drain after the restart")
        pool.remove(event_id)
        wait_until(lambda: _in_pool(pool), what="the restore")
        assert restarted.stop() == 0
    finally:
        if restarted.process and restarted.process.poll() is None:
            restarted.process.kill()


def test_the_same_error_is_logged_once(agent: Agent, control: EmulatorControl, daemon: Daemon) -> None:
    daemon_config(agent, free_port())
    assert agent.check().returncode == 0  # identity cached: from now on only scheduledevents is asked
    control.fault(match="scheduledevents", status=400, count=10_000)
    daemon.start()
    wait_until(
        lambda: len([r for r in control.requests() if r["status"] == "fault"]) >= 10, what="10 failed polls"
    )
    control.clear_faults()
    wait_until(lambda: "checks succeed again" in daemon.log(), what="recovery")
    assert daemon.stop() == 0
    log = daemon.log()
    assert log.count("check failed; retrying every poll") == 1
    assert log.count("check still failing") == 0  # error_log_interval (600 s) has not passed
    recovered = next(line for line in log.splitlines() if "checks succeed again" in line)
    assert int(json.loads(recovered)["failures"]) >= 10


def test_probe_method_readiness(agent: Agent, control: EmulatorControl, daemon: Daemon) -> None:
    port, probe_port = free_port(), free_port()
    flag = agent.tmp / "out-of-rotation"
    daemon_config(
        agent,
        port,
        probe_section(probe_port, flag),
    )
    daemon.start()
    ready = f"http://127.0.0.1:{probe_port}/ready"
    wait_until(lambda: fetch(ready)[0] == 200, what="ready")
    event_id = control.schedule("Reboot", ["web-0"])
    wait_until(lambda: fetch(ready)[0] == 503, what="not ready while drained")
    # The readiness follows the drain intent (saved first); the flag follows the action, a moment later.
    wait_until(flag.exists, what="the flag while drained")
    control.remove(event_id)
    wait_until(lambda: fetch(ready)[0] == 200, what="ready again")
    wait_until(lambda: not flag.exists(), what="no flag once back")
    assert daemon.stop() == 0


def test_oneshot_textfile_metrics_accumulate(agent: Agent, control: EmulatorControl) -> None:
    textfile = agent.tmp / "drainer.prom"
    agent.config_text = (
        DEFAULT_CONFIG + f'\n[drain]\nmethod = "log"\n\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    )
    assert agent.check().returncode == 0
    assert agent.check().returncode == 0
    text = textfile.read_text()
    assert 'drainer_imds_requests_total{status="200"}' in text
    assert "drainer_last_successful_check_timestamp_seconds" in text
    value = float(
        next(
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith("drainer_imds_requests_total{") and 'status="200"' in line
        )
    )
    assert value >= 3  # instance metadata once, scheduled events twice: counted across runs


def test_kill_switch(agent: Agent, control: EmulatorControl, tmp_path: Path) -> None:
    switch = tmp_path / "disabled"
    switch.touch()
    agent.config_text = f'disabled_file = "{switch}"\n' + DEFAULT_CONFIG
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0
    assert "kill-switch" in done.stderr
    assert not [r for r in control.requests() if "scheduledevents" in r["path"]]
    switch.unlink()
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is False


def test_the_daemon_notices_every_change_among_many_other_vms_events(
    agent: Agent, daemon: Daemon, control: EmulatorControl
) -> None:
    """The daemon reuses the document and the state while IMDS answers the same bytes (no ETags here);
    a change to any one of 300 other VMs' events, and an event for this VM, are each seen."""
    port = free_port()
    daemon_config(agent, port)
    control.imds_etags(False)
    others = [control.schedule("Freeze", ["web-1"], not_before_in=86400, duration=5) for _ in range(300)]
    daemon.start()

    def seen(event_id: str, to_state: str) -> bool:
        return any(h.get("event_id") == event_id and h.get("to_state") == to_state for h in agent.history())

    wait_until(lambda: seen(others[-1], "other-vm"), what="the other VMs' events recorded")
    more_polls(control, 2)  # of an unchanged document: the daemon reuses its document and state
    control.start(others[150])
    wait_until(lambda: seen(others[150], "other-vm/Started"), what="one of 300 started")
    more_polls(control, 2)
    control.remove(others[7])
    wait_until(lambda: seen(others[7], "cleared"), what="one of 300 gone")
    more_polls(control, 2)
    mine = control.schedule("Reboot", ["web-0"], not_before_in=900)
    wait_until(lambda: agent.status()["vm"]["drain_state"] == "drained", what="the drain for this VM")
    assert seen(mine, "active")
    assert daemon.stop() == 0


def test_the_daemon_follows_its_state_and_lock_when_they_are_moved(
    agent: Agent, pool: EmulatorControl, daemon: Daemon
) -> None:
    """The daemon keeps the state database and the lock file open between polls; a database moved
    aside (or a lock file deleted) while it runs is never written to again: the next poll opens the
    files at the path, as a first run would, and a drain is recorded there."""
    daemon.start()
    db = agent.state_dir / "state.db"
    wait_until(db.exists, what="the state database")
    more_polls(pool, 1)
    for suffix in ("", "-wal", "-shm"):  # as an operator (or drainer itself) sets a database aside
        side = agent.state_dir / f"state.db{suffix}"
        if side.exists():
            side.rename(agent.state_dir / f"state.db.moved{suffix}")
    (agent.state_dir / "lock").unlink()
    wait_until(db.exists, what="a new state database at the path")
    wait_until((agent.state_dir / "lock").exists, what="a new lock file at the path")
    event_id = pool.schedule("Reboot", ["web-0"])
    wait_until(lambda: not _in_pool(pool), what="the drain")
    status = json.loads(agent.run("status", "--json").stdout)
    assert status["vm"]["drain_state"] in ("drained", "draining"), status
    moved = sqlite3.connect(agent.state_dir / "state.db.moved")
    try:
        assert moved.execute("SELECT count(*) FROM events").fetchone()[0] == 0, (
            "the moved database was written"
        )
    finally:
        moved.close()
    pool.remove(event_id)
    wait_until(lambda: _in_pool(pool), what="the restore")
    # The kept descriptor is unlocked between polls: a one-shot run gets the lock then.
    wait_until(lambda: agent.run("check").returncode == 0, what="a one-shot check between two polls")
    assert daemon.stop() == 0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_the_daemon_sheds_the_sdk_when_idle_and_keeps_its_port_and_pid(
    agent: Agent, pool: EmulatorControl, daemon: Daemon
) -> None:
    """A drain loads the Azure SDK (~45 MiB); once back in rotation with nothing to do for
    [daemon] shed_sdk_after seconds, the daemon re-executes itself: the same pid, the metrics socket
    handed over (never unbound: a bind to it fails throughout), much less memory, and the next drain
    works as before."""
    port = free_port()
    daemon_config(agent, port)
    agent.config_text = agent.config_text.replace(
        "stop_timeout = 20\n", "stop_timeout = 20\nshed_sdk_after = 1\n"
    )
    daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid
    wait_until(lambda: fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="healthz")
    event_id = pool.schedule("Reboot", ["web-0"])
    wait_until(lambda: not _in_pool(pool), what="the drain")
    loaded = _rss_mib(pid)
    pool.remove(event_id)
    wait_until(lambda: _in_pool(pool), what="the restore")
    wait_until(lambda: "re-executing to free the Azure SDK" in daemon.log(), what="the shed")
    wait_until(lambda: daemon.log().count("daemon started") == 2, what="the new image's start")
    assert daemon.process.poll() is None and daemon.process.pid == pid
    squatter = socket.socket()
    try:
        with pytest.raises(OSError):  # the port stayed bound across the exec
            squatter.bind(("127.0.0.1", port))
    finally:
        squatter.close()
    wait_until(lambda: fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="healthz after the shed")
    more_polls(pool, 2)
    shed = _rss_mib(pid)
    assert shed < loaded - 15, (loaded, shed)
    # The SDK comes back when needed: the next maintenance drains as before.
    second = pool.schedule("Reboot", ["web-0"])
    wait_until(lambda: not _in_pool(pool), what="the drain after the shed")
    pool.remove(second)
    wait_until(lambda: _in_pool(pool), what="the restore after the shed")
    assert daemon.stop() == 0
