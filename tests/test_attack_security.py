"""Attacks on the security claims (README "Security"): each test is an attack that succeeds against
the current code. Run as root; other users' ownership comes from os.chown/os.lchown (uid 65534).

Each test here failed before its fix. Breaks accepted as limits (README, Security) were taken out.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, ENTRY, Agent
from tests.test_daemon import Daemon, daemon, daemon_config, free_port, probe_section, wait_until
from tests.test_hardening_http import get
from tests.test_hardening_urls import recorder

__all__ = ["daemon"]  # the fixture, shared with tests/test_daemon.py

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates files owned by other users")


def _precious(agent: Agent) -> tuple[Path, bytes]:
    outside = agent.tmp / "precious"
    outside.mkdir(exist_ok=True)
    target = outside / "target"
    target.write_bytes(b"root's precious file\n")
    target.chmod(0o644)
    return target, target.read_bytes()


def test_refused_state_dir_still_gets_failing_json_written_through_a_planted_symlink(agent: Agent) -> None:
    """A state dir writable by others is refused, yet the failure record follows a planted symlink."""
    target, content = _precious(agent)
    agent.state_dir.mkdir()
    agent.state_dir.chmod(0o1777)  # e.g. a state dir under a shared, sticky directory
    link = agent.state_dir / "failing.json.new"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)  # planted by the attacker
    done = agent.check()
    assert done.returncode != 0  # the state dir is refused ...
    assert "world-writable" in done.stderr, done.stderr
    assert target.read_bytes() == content, "root wrote the failure record through the planted symlink"


def test_attacker_symlink_below_a_sticky_root_ancestor_is_trusted_as_state_dir(agent: Agent) -> None:
    """A sticky root-owned ancestor is accepted although its next component is an attacker's symlink."""
    sticky = agent.tmp / "sticky"  # stands for /tmp
    sticky.mkdir()
    sticky.chmod(0o1777)
    victim = agent.tmp / "victim"  # any root-owned directory the attacker picks (/etc/cron.d, ...)
    victim.mkdir(mode=0o755)
    state_dir = sticky / "drainer"  # the operator's state_dir, not yet created (e.g. after a reboot)
    state_dir.symlink_to(victim)
    os.lchown(state_dir, NOBODY, NOBODY)  # the attacker got there first
    checked = agent.run("config", "check", DRAINER_STATE_DIR=str(state_dir))
    agent.check(DRAINER_STATE_DIR=str(state_dir))
    written = sorted(p.name for p in victim.iterdir())
    assert written == [], f"root wrote its state into the attacker's chosen directory: {written}"
    assert checked.returncode == 2 and f"{state_dir}" in checked.stderr, checked.stderr


def test_metrics_textfile_is_written_through_a_planted_directory_symlink(
    agent: Agent, control: EmulatorControl
) -> None:
    """The textfile's directory is never checked: a swapped-in symlink redirects root's write."""
    collector = agent.tmp / "node-exporter"  # owned by node_exporter's user, as packages do
    collector.mkdir()
    (collector / "textfile").mkdir()
    os.chown(collector, NOBODY, NOBODY)
    textfile = collector / "textfile" / "drainer.prom"
    agent.config_text = DEFAULT_CONFIG + f'\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    victim = agent.tmp / "victim"  # any root-owned directory
    victim.mkdir(mode=0o755)
    # The attacker (owner of the collector dir, so allowed to) swaps the textfile dir for a symlink;
    # done as root here only because the test's tmp path is not traversable by uid 65534.
    (collector / "textfile").rename(collector / "old")
    (collector / "textfile").symlink_to(victim)
    os.lchown(collector / "textfile", NOBODY, NOBODY)
    agent.check()
    assert not (victim / "drainer.prom").exists(), "root wrote the textfile through the planted symlink"


def _on_a_terminal(agent: Agent, *args: str) -> bytes:
    """``drainer ARGS`` with stderr on a pseudo-terminal (an operator running it by hand): what the
    terminal receives."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, str(ENTRY), *args],
        env=agent.env(),
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    received = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process is gone and the terminal is closed
            break
        if not chunk:
            break
        received += chunk
    process.wait(timeout=60)
    os.close(master)
    return received


def test_escape_sequences_in_an_imds_event_id_reach_the_terminal_raw(
    agent: Agent, pool: EmulatorControl
) -> None:
    """An EventId from IMDS is logged raw to a terminal: its escape sequences drive the terminal."""
    pool.schedule("Reboot", ["web-0"], event_id="ev-\x1b]0;owned\x07\x1b[2J")
    shown = _on_a_terminal(agent, "check")
    assert b"ev-" in shown, shown  # the event id was logged
    assert b"\x1b]0;owned" not in shown and b"\x1b[2J" not in shown, shown


def test_identity_default_fetches_the_managed_identity_token_through_the_proxy(
    agent: Agent, pool: EmulatorControl
) -> None:
    """identity = "default": the managed-identity token request to IMDS goes through HTTP_PROXY."""
    pool.schedule("Reboot", ["web-0"])
    agent.config_text = DEFAULT_CONFIG.replace("[azure]\n", '[azure]\nidentity = "default"\n')
    imds = agent.emulator.vm_url("web-0").replace("127.0.0.1", "localhost")
    with recorder() as proxy:
        agent.check(
            DRAINER_IMDS_ENDPOINT=imds,
            AZURE_POD_IDENTITY_AUTHORITY_HOST=imds,  # where azure-identity finds IMDS (as on a VM)
            HTTP_PROXY=f"http://127.0.0.1:{proxy.port}",
            HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}",
            NO_PROXY="127.0.0.1",  # ARM (127.0.0.1) direct; a corporate proxy for the rest
        )
        through_proxy = [r["path"] for r in proxy.seen]
    assert not [p for p in through_proxy if "/metadata/" in p], through_proxy


CHAIN = """#!{python}
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()  # out of the hook's process group: only drainer's /proc scan can find the chain
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open("{pgid}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename("{pgid}.tmp", "{pgid}")
    end = time.monotonic() + 12
    while time.monotonic() < end:  # each member forks its successor and exits at once
        if os.fork():
            os._exit(0)
    with open("{survivor}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename("{survivor}.tmp", "{survivor}")
    time.sleep(120)
    os._exit(0)
time.sleep(300)
"""


def _group_alive(pgid_file: Path) -> bool:
    if not pgid_file.exists():
        return True  # not started yet
    try:
        os.killpg(int(pgid_file.read_text()), 0)
    except ProcessLookupError:
        return False
    return True


def test_the_failure_record_gets_no_explicit_mode(agent: Agent) -> None:
    """failing.json (written via failing.json.new) takes the umask's mode: 0666 under umask 0."""
    agent.state_dir.mkdir(mode=0o750)
    with socket.socket() as closed:  # an IMDS that refuses connections: the check fails
        closed.bind(("127.0.0.1", 0))
        imds = f"http://127.0.0.1:{closed.getsockname()[1]}"
    done = subprocess.run(
        [sys.executable, str(ENTRY), "check"],
        env=agent.env(DRAINER_IMDS_ENDPOINT=imds),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.umask(0),  # a service manager with UMask=0000
    )
    record = agent.state_dir / "failing.json"
    assert record.exists(), done.stderr
    mode = record.stat().st_mode & 0o777
    assert mode & 0o022 == 0, f"failing.json is mode {mode:04o}: other users can rewrite what status shows"


def test_the_daemon_answers_readiness_from_a_flag_dir_others_can_write(
    agent: Agent, control: EmulatorControl, daemon: Daemon
) -> None:
    """`drainer run` does not refuse a world-writable flag dir: any local user takes the VM out."""
    metrics_port, probe_port = free_port(), free_port()
    flag_dir = agent.tmp / "run"
    flag_dir.mkdir()
    flag_dir.chmod(0o1777)
    flag = flag_dir / "out-of-rotation"
    daemon_config(
        agent,
        metrics_port,
        probe_section(probe_port, flag),
    )
    daemon.start()
    assert daemon.process is not None
    wait_until(lambda: get(probe_port, "/ready") == 200, what="in rotation")
    flag.mkdir()  # planted by another user: a directory, so that nobody can unlink it
    os.chown(flag, NOBODY, NOBODY)
    wait_until(lambda: get(metrics_port, "/healthz") == 200, what="a few more checks")
    answers = [get(probe_port, "/ready") for _ in range(3)]
    assert answers == [200, 200, 200] or daemon.process.poll() is not None, (
        f"no event, state in rotation, yet the probe answers {answers}: another user set readiness"
    )


def test_an_unprivileged_user_squatting_the_metrics_port_stops_every_drain(
    agent: Agent, pool: EmulatorControl, daemon: Daemon
) -> None:
    """Another user listening on the (loopback, unprivileged) metrics port first: no drain ever happens."""
    metrics_port = free_port()
    daemon_config(agent, metrics_port)
    ready_r, ready_w = os.pipe()
    squatter = os.fork()
    if squatter == 0:  # pragma: no cover - the attacker: uid 65534, before drainer (re)starts
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            listener = socket.socket()
            listener.bind(("127.0.0.1", metrics_port))
            listener.listen()
            os.write(ready_w, b"x")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        daemon.start()
        process = daemon.process
        assert process is not None
        pool.schedule("Reboot", ["web-0"])
        wait_until(
            lambda: "web-0-nic" not in next(iter(pool.membership().values())) or process.poll() is not None,
            timeout=20,
            what="the drain or the daemon's exit",
        )
        assert process.poll() is None, f"the daemon exited, nothing drains: {daemon.log()}"
    finally:
        os.kill(squatter, signal.SIGKILL)
        os.waitpid(squatter, 0)
        os.close(ready_r)


def test_imds_text_reaches_stderr_raw_through_the_sdk_logger(agent: Agent, pool: EmulatorControl) -> None:
    """azure-identity warnings bypass drainer's log (no escaping, no redaction): IMDS text hits stderr raw."""
    pool.schedule("Reboot", ["web-0"])
    hostile = "\x1b]0;owned\x07\x1b[2J"
    body = json.dumps({"error": "invalid_request", "error_description": f"bad {hostile}"})
    pool.fault(match="/metadata/identity/oauth2/token", status=400, body=body, count=50)
    done = agent.check()
    assert "\x1b]0;owned" not in done.stderr, done.stderr
