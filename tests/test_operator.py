"""What an operator meets, through the real CLI: one-line errors instead of tracebacks, `config check`
findings, `status` answering "is it working?", quiet logs, help pages and options in either place, and
the emulator's control subcommands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import DEFAULT_CONFIG, ENTRY, Agent, log_records

COMMANDS = (
    "check",
    "run",
    "drain",
    "restore",
    "status",
    "history",
    "config",
    "hooks",
    "doctor",
    "completion",
    "demo",
    "emulator",
)


def _one_clear_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("drainer: "), lines
    return lines[0]


# -- clear errors -------------------------------------------------------------------------------


def test_emulator_on_a_taken_port_is_one_line_and_exit_2(agent: Agent) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = agent.run("emulator", "--port", str(port), timeout=20)
    assert done.returncode == 2
    line = _one_clear_line(done)
    assert f"127.0.0.1:{port}" in line
    assert "--port" in line  # what to do


def test_status_into_a_closed_pipe_is_quiet(agent: Agent) -> None:
    assert agent.check().returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) is gone before drainer writes a byte
    try:
        done = subprocess.run(
            [sys.executable, str(ENTRY), "status"],
            env=agent.env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_missing_config_file_says_what_to_do(agent: Agent, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    done = agent.run("--config", str(missing), "check")
    assert done.returncode == 2
    line = _one_clear_line(done)
    assert str(missing) in line
    assert "no such file" in line
    assert "--config" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file_says_what_to_do(agent: Agent, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(DEFAULT_CONFIG)
    config.chmod(0o200)
    done = agent.run("--config", str(config), "config", "check")
    assert done.returncode == 2
    line = _one_clear_line(done)
    assert str(config) in line
    assert "cannot read" in line
    assert "root" in line


def test_a_bug_gets_a_traceback_and_a_request_to_report_it(agent: Agent) -> None:
    done = agent.check(TEST_RAISE_AT="decided")
    assert done.returncode == 70
    assert "Traceback" in done.stderr
    assert "RuntimeError: injected by the test" in done.stderr
    assert "please report it" in done.stderr.strip().splitlines()[-1]


# -- config check -------------------------------------------------------------------------------


def _hooks(agent: Agent, *dirs: str) -> Path:
    base = agent.tmp / "hooks.d"
    for name in dirs:
        (base / name).mkdir(parents=True, exist_ok=True)
    agent.config_text = DEFAULT_CONFIG + f'\n[hooks]\ndir = "{base}"\n'
    return base


def test_config_check_suggests_the_phase_a_misspelled_directory_meant(agent: Agent) -> None:
    base = _hooks(agent, "pre-drian", "post-drain")
    (base / "pre-drian" / "10-lb").write_text("#!/bin/sh\n")
    done = agent.run("config", "check")
    assert done.returncode == 2
    assert f"{base / 'pre-drian'}: not a phase directory" in done.stderr
    assert "did you mean pre-drain?" in done.stderr
    assert "post-drain" not in done.stderr  # a real phase is fine


def test_config_check_warns_about_a_missing_hooks_dir(agent: Agent) -> None:
    base = agent.tmp / "no-such-hooks.d"
    agent.config_text = DEFAULT_CONFIG + f'\n[hooks]\ndir = "{base}"\n[drain]\nmethod = "log"\n'
    done = agent.run("config", "check")
    assert done.returncode == 0  # no hooks is a valid choice, but not an "OK" one to stay silent about
    assert f"warning: hooks dir {base} does not exist" in done.stderr
    assert "1 warning" in done.stdout


def test_config_check_has_nothing_to_say_about_the_floor_and_refuses_the_retired_lease(agent: Agent) -> None:
    # Before issue 19 the shipped floor was checked by each VM alone (a warning said so) unless the
    # operator created a lease; now it holds across VMs with nothing to create.
    agent.config_text = DEFAULT_CONFIG
    done = agent.run("config", "check")
    assert done.returncode == 0
    assert "min_in_service" not in done.stderr
    lease = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/applicationSecurityGroups/l"
    agent.config_text = DEFAULT_CONFIG + f'\n[drain]\nmin_in_service = 2\n[fleet]\nlease = "{lease}"\n'
    done = agent.run("config", "check")
    assert done.returncode == 2, done.stderr
    assert "fleet.lease: is no longer used" in done.stderr


def test_config_check_catches_an_option_without_effect(agent: Agent) -> None:
    agent.config_text = DEFAULT_CONFIG + f'\n[metrics]\ntextfile = "{agent.tmp / "drainer.prom"}"\n'
    done = agent.run("config", "check")
    assert done.returncode == 2
    assert "[metrics] textfile is set but [metrics] enabled is false" in done.stderr


@pytest.mark.parametrize(
    ("metrics", "probe", "code", "text"),
    [
        ("0.0.0.0:9100", "127.0.0.1:9100", 2, "share a port"),
        ("127.0.0.1:9100", "127.0.0.1:9100", 0, "one listener serves both"),
        ("127.0.0.1:9100", "0.0.0.0:9101", 0, None),
    ],
)
def test_config_check_catches_two_services_on_one_port(
    agent: Agent, metrics: str, probe: str, code: int, text: str | None
) -> None:
    _hooks(agent, "pre-drain")
    agent.config_text += (
        f'\n[drain]\nmethod = "probe"\n\n[metrics]\nenabled = true\naddress = "{metrics}"\n'
        f'\n[probe]\naddress = "{probe}"\n'
    )
    done = agent.run("config", "check")
    assert done.returncode == code, done.stderr
    if text is None:
        assert done.stderr == ""
    else:
        assert text in done.stderr


# -- status: is it working? ------------------------------------------------------------------------


def _status(agent: Agent) -> tuple[int, dict[str, object], str]:
    as_json = agent.run("status", "--json")
    text = agent.run("status")
    assert as_json.returncode == text.returncode
    return as_json.returncode, json.loads(as_json.stdout), text.stdout


def test_status_answers_is_it_working(agent: Agent, control: EmulatorControl) -> None:
    code, data, text = _status(agent)
    assert (code, data["health"]) == (0, "unknown")
    assert agent.check().returncode == 0
    code, data, text = _status(agent)
    assert (code, data["health"], data["consecutive_failures"]) == (0, "ok", 0)
    assert data["last_successful_check"] is not None
    assert data["last_failed_check"] is None
    assert data["state_dir"] == str(agent.state_dir)
    assert text.splitlines()[0].startswith("health: OK")

    control.fault(match="scheduledevents", status=400, count=2)
    assert agent.check().returncode == 1
    assert agent.check().returncode == 1
    code, data, text = _status(agent)
    assert (code, data["health"], data["consecutive_failures"]) == (1, "failing", 2)
    failure = data["last_failed_check"]
    assert isinstance(failure, dict)
    assert "HTTP 400" in failure["error"]
    assert text.splitlines()[0].startswith("health: FAILING (the last 2 check(s) failed)")
    assert "last failed check:" in text and "HTTP 400" in text
    assert f"state dir: {agent.state_dir}" in text

    assert agent.check().returncode == 0  # recovered: the last failure stays visible
    code, data, _ = _status(agent)
    assert (code, data["health"], data["consecutive_failures"]) == (0, "ok", 0)
    assert isinstance(data["last_failed_check"], dict)
    assert "HTTP 400" in data["last_failed_check"]["error"]


def test_a_failed_drain_is_a_failed_check(agent: Agent, control: EmulatorControl) -> None:
    # IMDS answers; ARM fails every request: the drain itself fails. Retry-After (2 s) makes the next
    # retry pass the 1 s deadline whatever the retries' jitter draws.
    control.fault(match="/networkInterfaces", status=500, count=10_000, retry_after="2")
    agent.config_text = DEFAULT_CONFIG.replace("deadline = 20.0", "deadline = 1.0")
    control.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 1
    code, data, _ = _status(agent)
    assert (code, data["health"]) == (1, "failing")
    failure = data["last_failed_check"]
    assert isinstance(failure, dict)
    assert failure["error_type"] == "ActionError"
    assert "ARM deadline" in failure["error"]


def test_the_daemon_records_failing_and_recovered_checks(agent: Agent, control: EmulatorControl) -> None:
    from tests.test_daemon import Daemon, daemon_config, free_port, wait_until

    daemon_config(agent, free_port())
    assert agent.check().returncode == 0
    control.fault(match="scheduledevents", status=400, count=10_000)
    daemon = Daemon(agent)
    daemon.start()
    try:
        wait_until(lambda: agent.status()["consecutive_failures"] >= 3, what="three failed polls")
        assert agent.status()["health"] == "failing"
        control.clear_faults()
        wait_until(lambda: agent.status()["health"] == "ok", what="recovery")
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
    status = agent.status()
    assert status["consecutive_failures"] == 0
    assert "HTTP 400" in status["last_failed_check"]["error"]


def test_status_says_stale_and_disabled(agent: Agent, tmp_path: Path) -> None:
    switch = tmp_path / "disabled"
    agent.config_text = f'disabled_file = "{switch}"\n' + DEFAULT_CONFIG
    assert agent.check().returncode == 0
    old = 3600
    stamp = agent.state_dir / "last-check"
    os.utime(stamp, (stamp.stat().st_atime - old, stamp.stat().st_mtime - old))
    code, data, text = _status(agent)
    assert (code, data["health"]) == (1, "stale")
    assert "is drainer-check.timer or drainer.service running?" in text
    switch.touch()
    code, data, _ = _status(agent)
    assert (code, data["health"]) == (0, "disabled")


def test_idle_successful_checks_write_nothing_new(agent: Agent) -> None:
    # Recording check outcomes adds no write to the idle path: only the last-check stamp (and the
    # run lock's pid) change, as before.
    def files() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in agent.state_dir.iterdir() if p.name not in same}

    same = {"last-check", "lock"}
    assert agent.check().returncode == 0
    before = files()
    assert agent.check().returncode == 0
    assert files() == before
    assert "failing.json" not in before


# -- quiet logs ----------------------------------------------------------------------------------


def test_textfile_metrics_have_no_created_series(agent: Agent) -> None:
    textfile = agent.tmp / "drainer.prom"
    agent.config_text = DEFAULT_CONFIG + f'\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    assert agent.check().returncode == 0
    text = textfile.read_text()
    assert "drainer_imds_requests_total" in text
    assert "_created" not in text


def test_a_standing_warning_is_logged_once_by_the_daemon(agent: Agent, control: EmulatorControl) -> None:
    from tests.test_daemon import Daemon, daemon_config, free_port, wait_until

    daemon_config(agent, free_port())
    document = {
        "DocumentIncarnation": 7,
        "Events": [
            {
                "EventId": "odd-1",
                "EventType": "Hibernate",
                "ResourceType": "VirtualMachine",
                "Resources": ["web-0"],
                "EventStatus": "Scheduled",
                "NotBefore": "",
                "Description": "",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }
        ],
    }
    control.set_document(json.dumps(document))
    daemon = Daemon(agent)
    daemon.start()
    try:
        wait_until(
            lambda: len([r for r in control.requests() if "scheduledevents" in r["path"]]) >= 6,
            what="six polls",
        )
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
    odd = "scheduled event not taken at face value"
    warnings = [r for r in log_records(daemon.log()) if r["event"] == odd]
    assert len(warnings) == 1, warnings
    assert warnings[0]["event_id"] == "odd-1"


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_a_description_and_examples(agent: Agent, command: str) -> None:
    done = agent.run(command, "--help")
    assert done.returncode == 0
    usage, _, rest = done.stdout.partition("\n\n")
    assert usage.startswith(f"usage: drainer {command}")
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("options:", "positional")), done.stdout
    assert "examples:\n  drainer" in done.stdout


def test_global_options_before_or_after_the_subcommand(agent: Agent, control: EmulatorControl) -> None:
    other = agent.tmp / "other.toml"
    other.write_text(DEFAULT_CONFIG + '\n[drain]\nmethod = "log"\n')
    for argv in (("config", "show", "--config", str(other)), ("--config", str(other), "config", "show")):
        done = agent.run(*argv)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["drain"]["method"] == "log"
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "log"\n'
    control.schedule("Reboot", ["web-0"])
    done = agent.run("check", "--dry-run", "-v")
    assert done.returncode == 0, done.stderr
    assert "dry-run: would take vm out of rotation" in done.stderr
    assert any(r["level"] == "debug" for r in log_records(done.stderr))
    assert agent.status()["vm"]["in_rotation"] is True


def test_emulator_subcommands_script_a_running_emulator(agent: Agent, emulator: RunningEmulator) -> None:
    url = ("--url", emulator.url)
    control = EmulatorControl(emulator.url)
    assert agent.run("emulator", *url, "lb", "lb-web", "--pool", "web-pool", "--vm", "web-0").returncode == 0
    assert control.membership() == {next(iter(control.membership())): ["web-0-nic"]}
    done = agent.run("emulator", *url, "schedule", "Reboot", "--vm", "web-0", "--not-before-in", "600")
    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    assert [e["EventStatus"] for e in control.state()["events"] if e["EventId"] == event_id] == ["Scheduled"]
    assert agent.run("emulator", *url, "start", event_id).returncode == 0
    assert [e["EventStatus"] for e in control.state()["events"]] == ["Started"]
    shown = json.loads(agent.run("emulator", *url, "state").stdout)
    assert shown["events"][0]["EventId"] == event_id
    assert agent.run("emulator", *url, "complete", event_id).returncode == 0
    assert control.state()["events"] == []
    gone = agent.run("emulator", *url, "cancel", event_id)
    assert gone.returncode == 2
    assert f"has no event {event_id}" in _one_clear_line(gone)


def test_bash_completion_knows_the_commands_and_their_options(agent: Agent, tmp_path: Path) -> None:
    import shutil

    done = agent.run("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = tmp_path / "drainer.bash"
    script.write_text(done.stdout)
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True, check=False
        )
        assert lint.returncode == 0, lint.stdout
    probe = (
        f"source {script}\n"
        'try() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _drainer; '
        'echo "${COMPREPLY[*]}"; }\n'
        "try drainer sta\ntry drainer status --j\ntry drainer --config x con\n"
        "try drainer emulator sch\ntry drainer emulator --url u schedule Re\n"
    )
    answers = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert answers.splitlines() == ["status", "--json", "config", "schedule", "Reboot Redeploy"]
