"""Early approval once drained, availability-set awareness, the restore gate and the window record."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import DEFAULT_CONFIG, Agent, log_records

APPROVING = DEFAULT_CONFIG.replace("enabled = false", "enabled = true\npeer_check_interval = 0")


def _approvals(control: EmulatorControl) -> list[dict[str, object]]:
    return list(control.state()["approvals"])  # type: ignore[arg-type]


def _status_of(control: EmulatorControl, event_id: str) -> str | None:
    for event in control.state()["events"]:
        if event["EventId"] == event_id:
            return str(event["EventStatus"])
    return None


def _other(emulator: RunningEmulator, tmp: Path, vm: str, config: str) -> Agent:
    (tmp / vm).mkdir()
    other = Agent(emulator=emulator, tmp=tmp / vm, vm=vm)
    other.config_text = config
    return other


def test_approves_once_drained_and_the_event_starts(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = APPROVING
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert [a["event_id"] for a in _approvals(pool)] == [event_id]
    assert _status_of(pool, event_id) == "Started"  # the emulator starts it, as Azure does
    (event,) = agent.status()["events"]
    assert event["approval"] == "approved"
    assert event["left_rotation_at"] <= event["approved_at"]
    assert agent.check().returncode == 0
    assert len(_approvals(pool)) == 1  # never twice
    pool.remove(event_id)
    assert agent.check().returncode == 0
    (window,) = json.loads(agent.run("history", "--json", "--windows").stdout)
    assert window["out_of_rotation_seconds"] is not None and window["out_of_rotation_seconds"] >= 0
    assert window["returned_at"] >= window["approved_at"] >= window["left_rotation_at"]
    text = agent.run("history").stdout
    assert "Maintenance windows" in text and event_id in text


@pytest.fixture
def connection() -> Iterator[tuple[int, socket.socket]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    yield port, client
    client.close()
    accepted.close()
    server.close()


def test_waits_for_established_connections_before_approving(
    agent: Agent, pool: EmulatorControl, connection: tuple[int, socket.socket]
) -> None:
    port, client = connection
    agent.config_text = APPROVING.replace(
        "service_ports = []", f"service_ports = [{port}]\ndrain_timeout = 600"
    )
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    (event,) = agent.status()["events"]
    assert (
        event["approval"].startswith("waiting: 1 established connections")
        or "2 established" in event["approval"]
    )
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert _approvals(pool) == []
    client.close()
    connection_gone = agent.check()
    assert connection_gone.returncode == 0
    assert [a["event_id"] for a in _approvals(pool)] == [event_id]


def test_connection_wait_is_bounded_by_drain_timeout(
    agent: Agent, pool: EmulatorControl, connection: tuple[int, socket.socket]
) -> None:
    port, _ = connection
    agent.config_text = APPROVING.replace(
        "service_ports = []", f"service_ports = [{port}]\ndrain_timeout = 0"
    )
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    assert len(_approvals(pool)) == 1


def test_no_approval_when_the_drain_failed(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = APPROVING
    pool.fail_next_lro(1)
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 1
    assert _approvals(pool) == []
    (event,) = agent.status()["events"]
    assert event["approval"] == "waiting: VM is draining"
    assert agent.check().returncode == 0  # the drain succeeds now, then the approval goes
    assert len(_approvals(pool)) == 1


def test_no_approval_when_the_drain_is_held(agent: Agent, control: EmulatorControl) -> None:
    control.load_balancer_with("lb-web", "web-pool", ["web-0"])
    agent.config_text = APPROVING + "\n[drain]\nmin_in_service = 1\n"
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    assert _approvals(control) == []
    assert "held" in agent.status()["events"][0]["approval"]


@pytest.mark.parametrize("first", ["web-0", "web-1"])
def test_multi_vm_event_is_approved_exactly_once_when_every_listed_member_is_out(
    agent: Agent, pool: EmulatorControl, emulator: RunningEmulator, tmp_path: Path, first: str
) -> None:
    agent.config_text = APPROVING
    web1 = _other(emulator, tmp_path, "web-1", APPROVING)
    agents = {"web-0": agent, "web-1": web1}
    event_id = pool.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    second = "web-1" if first == "web-0" else "web-0"
    assert agents[first].check().returncode == 0
    assert _approvals(pool) == []  # the other listed VM still serves from the shared pool
    waiting = agents[first].status()["events"][0]["approval"]
    if first == "web-0":
        assert waiting == "waiting: web-1 still in a pool"
    else:  # web-1 is second in the order of approvers: its turn comes one slot after it left
        assert waiting.startswith("waiting: web-0 approves first")
    assert agents[second].check().returncode == 0
    if first == "web-0":
        # web-1 sees web-0 out, but web-0 (the lowest name) approves first; web-1's turn comes
        # only one slot after it left rotation.
        assert _approvals(pool) == []
        assert agents[second].status()["events"][0]["approval"].startswith("waiting: web-0 approves first")
        assert agents[first].check().returncode == 0
    approvals = _approvals(pool)
    assert [(a["event_id"], a["vm"]) for a in approvals] == [(event_id, "web-0")]
    for a in agents.values():
        assert a.check().returncode == 0
    assert len(_approvals(pool)) == 1
    assert _status_of(pool, event_id) == "Started"


def test_peer_membership_reads_are_reused_for_peer_check_interval(
    agent: Agent, pool: EmulatorControl
) -> None:
    # No floor: it reads the peers' NICs for their intents, which is not what is counted here.
    agent.config_text = APPROVING.replace("peer_check_interval = 0", "peer_check_interval = 3600")
    agent.config_text += "\n[drain]\nmin_in_service = 0\n"
    pool.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    for _ in range(3):
        assert agent.check().returncode == 0
    gets = [r["path"] for r in pool.requests() if r["method"] == "GET"]
    assert not [p for p in gets if p.endswith("/networkInterfaces")]  # no list of NICs at all
    vms = [p for p in gets if "/Microsoft.Compute/virtualMachines/" in p]
    # This VM's NICs once per boot (approval uses them too), the other listed VM's once per event.
    assert sorted(p.rsplit("/", 1)[1] for p in vms) == ["web-0", "web-1"]
    # web-1 is still in the pool: its NIC is read once, the answer kept for peer_check_interval.
    assert len([p for p in gets if p.endswith("/web-1-nic")]) == 1


def test_near_not_before_nothing_is_approved(agent: Agent, pool: EmulatorControl) -> None:
    # Close to NotBefore an approval gains nothing: not even a VM alone in its event approves.
    agent.config_text = APPROVING.replace("[approval]", "[approval]\nnear_seconds = 3600")
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    assert _approvals(pool) == []
    assert (
        agent.status()["events"][0]["approval"]
        == "not approving: NotBefore is near (approving gains nothing)"
    )


def test_preempt_is_not_approved_and_other_vms_events_never(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = APPROVING
    pool.schedule("Preempt", ["web-0"], not_before_in=30)
    pool.schedule("Reboot", ["web-1"], not_before_in=900)
    assert agent.check().returncode == 0
    assert _approvals(pool) == []
    by_type = {e["event_type"]: e for e in agent.status()["events"]}
    assert by_type["Preempt"]["approval"] == "not approved early (policy)"
    assert by_type["Reboot"]["approval"] is None


def test_dry_run_says_it_would_approve_and_does_not(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = APPROVING
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agent.check("--dry-run")
    assert done.returncode == 0, done.stderr
    assert _approvals(pool) == []
    assert any(r["event"] == "dry-run: would approve (StartRequests)" for r in log_records(done.stderr))


class _Health:
    """A local health endpoint whose answer the test sets."""

    def __init__(self) -> None:
        self.status = 503
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(health.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[_Health]:
    endpoint = _Health()
    yield endpoint
    endpoint.close()


def test_restore_gate_waits_for_the_health_check_then_restores(
    agent: Agent, pool: EmulatorControl, health: _Health
) -> None:
    agent.config_text = DEFAULT_CONFIG + f'\n[restore]\nhealth_url = "{health.url}"\nhealth_timeout = 600\n'
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    pool.remove(event_id)
    assert agent.check().returncode == 0
    status = agent.status()
    assert status["vm"]["drain_state"] == "restoring"  # the app is not healthy yet: stay out
    assert "web-0-nic" not in next(iter(pool.membership().values()))
    health.status = 200
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True
    assert "web-0-nic" in next(iter(pool.membership().values()))


def test_restore_gate_times_out_and_restores_anyway(
    agent: Agent, pool: EmulatorControl, health: _Health
) -> None:
    agent.config_text = DEFAULT_CONFIG + f'\n[restore]\nhealth_url = "{health.url}"\nhealth_timeout = 0\n'
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    pool.remove(event_id)
    done = agent.check()
    assert done.returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True
    assert any(r["event"] == "restore gate timed out" for r in log_records(done.stderr))


def test_restore_gate_with_a_command(agent: Agent, pool: EmulatorControl, tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    agent.config_text = DEFAULT_CONFIG + f'\n[restore]\nhealth_command = ["test", "-e", "{flag}"]\n'
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    pool.remove(event_id)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "restoring"
    flag.touch()
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True


def test_a_kept_answer_never_lets_the_approval_go(
    agent: Agent, pool: EmulatorControl, connection: tuple[int, socket.socket]
) -> None:
    # Issue 19: a kept "no listed VM in a pool" (younger than peer_check_interval) sent an approval
    # while a listed VM was back in its pool. The answer that lets the approval go is read right
    # before the POST.
    port, client = connection
    agent.config_text = APPROVING.replace("peer_check_interval = 0", "peer_check_interval = 3600").replace(
        "service_ports = []", f"service_ports = [{port}]\ndrain_timeout = 600"
    )
    pool.leave("web-1", "lb-web", "web-pool")  # the other listed VM is out already
    pool.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    assert agent.check().returncode == 0
    assert agent.status()["events"][0]["approval"].startswith("waiting: 1 established")
    pool.join("web-1", "lb-web", "web-pool")  # put back meanwhile (an operator, a restore)
    client.close()
    assert agent.check().returncode == 0
    assert _approvals(pool) == []
    assert agent.status()["events"][0]["approval"] == "waiting: web-1 still in a pool"


def test_a_listed_vm_that_does_not_exist_is_named_and_the_approval_waits(
    agent: Agent, pool: EmulatorControl
) -> None:
    agent.config_text = APPROVING
    pool.schedule("Reboot", ["web-0", "web-9"], not_before_in=900)
    assert agent.check().returncode == 0
    assert _approvals(pool) == []
    assert agent.status()["events"][0]["approval"] == (
        "waiting for NotBefore: web-9 not found (no such VM resource)"
    )


@pytest.mark.parametrize(("takedown", "approved"), [(3600, False), (0, True)])
def test_probe_method_approves_once_the_load_balancer_saw_the_probe_fail(
    agent: Agent, control: EmulatorControl, takedown: int, approved: bool
) -> None:
    # Issue 19: with the probe method the approval went 16 ms after the flag was written; the load
    # balancer notices only after its probe failed interval x threshold.
    agent.config_text = APPROVING + (
        f'\n[drain]\nmethod = "probe"\n[probe]\nflag_file = "{agent.tmp / "out"}"\n'
        f"takedown_seconds = {takedown}\n"
    )
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert bool(_approvals(control)) is approved
    if not approved:
        assert agent.status()["events"][0]["approval"].startswith("waiting: the load balancer's health probe")


def test_a_failing_post_drain_hook_holds_the_approval_until_it_succeeds(
    agent: Agent, pool: EmulatorControl
) -> None:
    ok = agent.tmp / "ok-now"
    hooks = agent.tmp / "hooks"
    (hooks / "post-drain").mkdir(parents=True)
    hooks.chmod(0o755)
    script = hooks / "post-drain" / "10-flaky"
    script.write_text(f'#!/bin/sh\n[ -e "{ok}" ]\n')
    script.chmod(0o755)
    agent.config_text = APPROVING + f'\n[hooks]\ndir = "{hooks}"\n'
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert _approvals(pool) == []
    assert agent.status()["events"][0]["approval"] == "waiting: post-drain hooks failing (retried)"
    assert agent.check().returncode == 0
    assert _approvals(pool) == []
    ok.touch()
    assert agent.check().returncode == 0  # the hook succeeds on its retry, then the approval goes
    assert len(_approvals(pool)) == 1


def test_an_approval_that_does_not_start_the_event_is_not_sent_again(
    agent: Agent, pool: EmulatorControl, emulator: RunningEmulator
) -> None:
    # Microsoft: "The event may not start immediately upon approval. In some cases Azure requires the
    # approval of all the VMs hosted on the node before proceeding with the event."
    agent.config_text = APPROVING
    pool.share_node("node-1", ["web-0", "web-2"])
    mine = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    theirs = pool.schedule("Reboot", ["web-2"], not_before_in=900)  # another set on the same host
    assert agent.check().returncode == 0
    assert [a["event_id"] for a in _approvals(pool)] == [mine]
    assert _status_of(pool, mine) == "Scheduled"
    for _ in range(2):
        assert agent.check().returncode == 0
    assert len(_approvals(pool)) == 1  # approved once; the VM stays out while it waits
    status = agent.status()
    assert status["vm"]["drain_state"] == "drained" and status["events"][0]["approval"] == "approved"
    _other(emulator, agent.tmp, "web-2", APPROVING).check()  # web-2 drains and approves its own
    assert _status_of(pool, mine) == "Started"
    assert _status_of(pool, theirs) == "Started"
