"""The one-shot ``drainer check`` end to end: the real CLI in a subprocess against the emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.io.lock import RunLock
from tests.conftest import EXAMPLES, Agent, load_scenarios, log_records


@pytest.mark.parametrize("scenario", load_scenarios(), ids=lambda s: s["name"])
def test_shared_scenarios_through_the_emulator(
    agent: Agent, control: EmulatorControl, scenario: dict[str, Any]
) -> None:
    agent.vm = scenario["vm"]
    for number, item in enumerate(scenario["steps"]):
        control.set_document(json.dumps(item["document"]))
        done = agent.check()
        assert done.returncode == 0, done.stderr
        status = agent.status()
        assert status["vm"]["in_rotation"] is item["in_rotation"], (
            f"{scenario['name']} step {number}: {scenario['why']}\n{done.stderr}"
        )


def test_verbatim_docs_sequence_freeze_of_5s_is_recorded_not_acted_on(
    agent: Agent, control: EmulatorControl
) -> None:
    control.add_vm("WestNO_0")
    agent.vm = "WestNO_0"
    for n in (1, 2, 3, 4):
        control.set_document((EXAMPLES / f"se_msdocs_example_incarnation_{n}.json").read_bytes())
        done = agent.check()
        assert done.returncode == 0, done.stderr
        assert agent.status()["vm"]["in_rotation"] is True
        if n == 3:
            (event,) = agent.status()["events"]
            assert event["state"] == "ignored"
            assert event["event_status"] == "Started"
            assert "shorter than 30s" in event["reason"]
    assert agent.status()["events"][0]["state"] == "cleared"


def test_unknown_freeze_drains_this_vm_from_the_verbatim_doc(agent: Agent, control: EmulatorControl) -> None:
    agent.config_text = "[policy]\nfreeze_min_duration_seconds = 1\n[imds]\ndeadline = 3.0\n"
    control.add_vm("WestNO_1")
    agent.vm = "westno_1"  # the VM knows its name in another case
    control.set_document((EXAMPLES / "se_msdocs_example_incarnation_2.json").read_bytes())
    assert agent.check().returncode == 0
    status = agent.status()
    assert status["vm"]["in_rotation"] is False
    assert status["vm"]["held_by"] == ["C7061BAC-AFDC-4513-B24B-AA5F13A16123"]


def test_full_cycle_status_history_and_log_records(agent: Agent, control: EmulatorControl) -> None:
    assert agent.check().returncode == 0
    status = agent.status()
    assert status["vm"]["name"] == "web-0"
    assert status["vm"]["in_rotation"] is True
    assert status["events"] == []

    event_id = control.schedule("Reboot", ["web-0", "web-1"], not_before_in=900)
    other = control.schedule("Redeploy", ["web-2"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    records = log_records(done.stderr)
    vm_moves = [(r["from_state"], r["to_state"]) for r in records if r["event"] == "vm transition"]
    assert vm_moves == [("in_rotation", "draining"), ("draining", "drained")]
    event_moves = {r["event_id"]: r["to_state"] for r in records if r["event"] == "event transition"}
    assert event_moves == {event_id: "active", other: "other-vm"}
    for record in records:
        assert "timestamp" in record and "level" in record

    status = agent.status()
    assert status["vm"]["in_rotation"] is False
    by_id = {e["event_id"]: e for e in status["events"]}
    assert by_id[event_id]["state"] == "active"
    assert by_id[event_id]["event_type"] == "Reboot"
    assert by_id[event_id]["event_status"] == "Scheduled"
    assert by_id[event_id]["not_before"].endswith("Z")
    assert by_id[other]["state"] == "other-vm"
    assert by_id[other]["concerns_vm"] is False

    control.start(event_id)
    assert agent.check().returncode == 0
    control.remove(event_id)
    done = agent.check()
    assert done.returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True

    history = agent.history()
    vm_path = [h["to_state"] for h in history if h["subject"] == "vm"]
    assert vm_path == ["draining", "drained", "restoring", "in_rotation"]
    ours = [h["to_state"] for h in history if h["event_id"] == event_id]
    assert ours == ["active", "active/Started", "cleared"]
    text = agent.run("history", "--event", event_id.lower())
    assert text.returncode == 0
    assert text.stdout.count(event_id) == 4  # its window line and its three transitions
    assert "Maintenance windows" in text.stdout


def test_idle_run_twice_writes_no_history(agent: Agent) -> None:
    assert agent.check().returncode == 0
    assert agent.check().returncode == 0
    assert agent.history() == []


def test_malformed_document_changes_nothing_and_exits_1(agent: Agent, control: EmulatorControl) -> None:
    event_id = control.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    before = agent.status()
    for body in ('{"DocumentIncarnation": 9, "Events": "oops"}', "<html>gateway</html>"):
        control.set_document(body)
        done = agent.check()
        assert done.returncode == 1
        assert "malformed" in done.stderr.lower() or "not json" in done.stderr.lower()
        assert "Traceback" not in done.stderr
        after = agent.status()
        assert after["vm"] == before["vm"]
        assert after["events"] == before["events"]
        assert after["incarnation"] == before["incarnation"]
    control.clear_document()
    control.remove(event_id)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True


def test_imds_down_is_exit_1_with_one_clear_line(agent: Agent, control: EmulatorControl) -> None:
    control.fault(match="/metadata/", status=500, count=1000)
    done = agent.check()
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    # One line per failure: the log record, not also a second `drainer: ...` line (cron sends both
    # to syslog).
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    (record,) = log_records(done.stderr)
    assert record["level"] == "error"
    assert record["error"].startswith("IMDS")
    assert "HTTP 500" in record["error"] or "deadline" in record["error"]


def test_second_run_exits_quickly_while_the_lock_is_held(agent: Agent) -> None:
    agent.state_dir.mkdir(parents=True)
    with RunLock(agent.state_dir):
        done = agent.check()
    assert done.returncode == 3
    (record,) = log_records(done.stderr)
    assert record["level"] == "info"  # lock contention is no failure: not logged as one
    assert record["event"].startswith("skipped: another drainer run holds the lock")
    assert "another drainer run holds" in record["detail"]
    assert agent.check().returncode == 0


def test_dry_run_decides_but_persists_nothing(agent: Agent, control: EmulatorControl) -> None:
    agent.config_text = '[drain]\nmethod = "log"\n'
    control.schedule("Reboot", ["web-0"])
    done = agent.check("--dry-run")
    assert done.returncode == 0
    assert "dry-run: would take vm out of rotation" in done.stderr
    assert agent.status()["vm"]["in_rotation"] is True
    assert agent.history() == []


def test_boot_id_is_recorded_and_a_reboot_noted(
    agent: Agent, control: EmulatorControl, tmp_path: Path
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-aaaa\n")
    event_id = control.schedule("Reboot", ["web-0"])
    assert agent.check(TEST_BOOT_ID_FILE=str(boot)).returncode == 0
    control.start(event_id)
    boot.write_text("22222222-bbbb\n")
    done = agent.check(TEST_BOOT_ID_FILE=str(boot))
    assert done.returncode == 0
    notes = [h for h in agent.history() if h["subject"] == "agent"]
    assert notes and notes[-1]["to_state"] == "boot 22222222-bbbb"
    assert agent.status()["vm"]["in_rotation"] is False


def test_status_before_any_run(agent: Agent) -> None:
    status = agent.status()
    assert status["vm"]["in_rotation"] is True
    assert status["vm"]["name"] is None
    assert status["events"] == []
    assert not agent.state_dir.exists()  # reading status creates nothing
    text = agent.run("status")
    assert "not yet identified" in text.stdout


def test_config_errors_name_file_key_and_reason(agent: Agent) -> None:
    agent.config_text = '[policy.actions]\nReboot = "sometimes"\n'
    done = agent.run("config", "check")
    assert done.returncode == 2
    assert str(agent.config_path) in done.stderr
    assert "policy.actions.Reboot" in done.stderr
    assert "must be one of drain, ignore" in done.stderr
    assert agent.check().returncode == 2


def test_config_check_and_show(agent: Agent) -> None:
    done = agent.run("config", "check")
    assert done.returncode == 0, done.stderr
    shown = json.loads(agent.run("config", "show").stdout)
    assert shown["imds"]["endpoint"] == agent.emulator.vm_url("web-0")
    assert shown["policy"]["actions"]["Freeze"] == "drain"


def test_version_and_usage_errors(agent: Agent) -> None:
    done = agent.run("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("drainer ")
    assert agent.run("frobnicate").returncode == 2


def test_state_dir_that_cannot_be_created_is_a_clear_error(agent: Agent, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = agent.check(DRAINER_STATE_DIR=str(blocker / "state"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert str(blocker) in done.stderr


@pytest.mark.skipif(os.name != "posix", reason="syslog over a unix socket")
def test_syslog_sink_receives_transitions(agent: Agent, control: EmulatorControl, tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(5)
    try:
        agent.config_text = f'[logging]\nsyslog = true\nsyslog_address = "{path}"\n'
        control.schedule("Reboot", ["web-0"])
        assert agent.check().returncode == 0
        lines = []
        while True:
            try:
                lines.append(sink.recv(65536).decode())
            except TimeoutError:
                break
            if any("vm transition" in line for line in lines):
                break
    finally:
        sink.close()
    assert any("drainer: " in line and "vm transition" in line for line in lines)


def test_idle_run_imports_nothing_heavy_and_writes_no_transaction(agent: Agent, tmp_path: Path) -> None:
    assert agent.check().returncode == 0  # first run: creates the database, caches the VM identity
    db = agent.state_dir / "state.db"
    wal = agent.state_dir / "state.db-wal"
    before = (db.stat().st_mtime_ns, wal.stat().st_size if wal.exists() else 0)
    modules_file = tmp_path / "modules.txt"
    done = agent.check(TEST_MODULES_OUT=str(modules_file))
    assert done.returncode == 0, done.stderr
    modules = set(modules_file.read_text().split())
    assert "drainer.app.runner" in modules  # the check really ran in this process
    heavy = {m for m in modules if m.split(".")[0] in {"azure", "apscheduler", "prometheus_client"}}
    assert heavy == set()
    # Nothing is logged at the default level on an idle run, so structlog is never even imported.
    assert not any(m.startswith("structlog") for m in modules)
    assert (db.stat().st_mtime_ns, wal.stat().st_size if wal.exists() else 0) == before
    assert agent.status()["last_check"] is not None


def test_last_successful_check_is_never_a_failed_run(agent: Agent, pool: EmulatorControl) -> None:
    """`status` says when the last successful check was: a run whose drain failed does not move it."""
    assert agent.check().returncode == 0
    stamp = agent.state_dir / "last-check"
    first = stamp.stat().st_mtime_ns
    os.utime(stamp, ns=(first - 10**10, first - 10**10))  # 10 s earlier: a later touch would show
    pool.fail_next_lro(1)
    pool.schedule("Reboot", ["web-0"])
    failed = agent.check()
    assert failed.returncode == 1, failed.stderr
    assert stamp.stat().st_mtime_ns == first - 10**10
    assert agent.check().returncode == 0  # the retry succeeds
    assert stamp.stat().st_mtime_ns > first - 10**10
