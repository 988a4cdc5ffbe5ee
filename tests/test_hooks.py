"""Hooks: real scripts in a temporary hooks directory, run by the real CLI against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, ENTRY, Agent, log_records

LOG_METHOD = '\n[drain]\nmethod = "log"\n'


def hook(agent: Agent, phase: str, name: str, body: str, mode: int = 0o755) -> Path:
    directory = agent.tmp / "hooks" / phase
    directory.mkdir(parents=True, exist_ok=True)
    (agent.tmp / "hooks").chmod(0o755)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def configure(agent: Agent, extra: str = "", method: str = LOG_METHOD) -> None:
    agent.config_text = DEFAULT_CONFIG + method + f'\n[hooks]\ndir = "{agent.tmp / "hooks"}"\n' + extra


def test_order_around_the_builtin_drain(agent: Agent, control: EmulatorControl) -> None:
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1"])
    trace = agent.tmp / "trace"
    for phase, name in [("pre-drain", "20-b"), ("pre-drain", "10-a"), ("post-drain", "10-c")]:
        hook(
            agent,
            phase,
            name,
            f'python3 -c "import time; print(time.time())" >/dev/null; '
            f'echo "$DRAINER_PHASE/{name} $(date +%s.%N)" >> "{trace}"\n',
        )
    configure(agent, method="")
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    lines = trace.read_text().split("\n")[:-1]
    assert [line.split()[0] for line in lines] == ["pre-drain/10-a", "pre-drain/20-b", "post-drain/10-c"]
    intent, put = [r for r in control.requests() if r["method"] == "PUT"]
    times = [float(line.split()[1]) for line in lines]
    assert intent["at"] < times[0]  # the fleet's floor first (the intent on the NIC), then the hooks
    assert times[1] < put["at"] < times[2]  # the load-balancer write sits between the two phases


def test_environment_contract_and_json_stdin(agent: Agent, control: EmulatorControl) -> None:
    out = agent.tmp / "seen"
    hook(agent, "pre-drain", "10-dump", f'env > "{out}.env"; cat > "{out}.json"\n')
    configure(agent)
    event_id = control.schedule("Reboot", ["web-0", "web-1"], not_before_in=900, duration=-1)
    done = agent.check(
        DRAINER_EVENT_ID="forged",
        DRAINER_DRY_RUN="1",
        DRAINER_PHASE="evil",
        SECRET_TOKEN="s3cr3t",
        LC_ALL="C.UTF-8",
    )
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in out.with_suffix(".env").read_text().splitlines() if "=" in line)
    assert env["DRAINER_EVENT_ID"] == event_id  # ours win over the inherited environment
    assert env["DRAINER_DRY_RUN"] == "0"
    assert env["DRAINER_PHASE"] == "pre-drain"
    assert env["DRAINER_EVENT_TYPE"] == "Reboot"
    assert env["DRAINER_EVENT_STATUS"] == "Scheduled"
    assert env["DRAINER_NOT_BEFORE"].endswith("Z") and "T" in env["DRAINER_NOT_BEFORE"]
    assert env["DRAINER_DURATION"] == "-1"
    assert env["DRAINER_RESOURCES"] == "web-0,web-1"
    assert env["DRAINER_EVENT_SOURCE"] == "Platform"
    assert env["DRAINER_VM_NAME"] == "web-0"
    assert env["DRAINER_STATE_DIR"] == str(agent.state_dir)
    assert env["DRAINER_EVENT_CONCERNS_VM"] == "1"
    assert "SECRET_TOKEN" not in env  # the inherited environment is an allow-list
    assert "DRAINER_IMDS_ENDPOINT" not in env
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["PATH"]
    document = json.loads(out.with_suffix(".json").read_text())
    assert document["phase"] == "pre-drain"
    assert document["vm"]["name"] == "web-0"
    assert document["events"][0]["EventId"] == event_id
    assert document["events"][0]["Resources"] == ["web-0", "web-1"]
    assert document["dry_run"] is False


def test_shell_metacharacters_in_an_event_id_reach_the_hook_intact(
    agent: Agent, control: EmulatorControl
) -> None:
    pwned = agent.tmp / "PWNED"
    evil = f"A$(touch {pwned});`touch {pwned}`;\"'$HOME|&>x"
    out = agent.tmp / "id"
    hook(agent, "pre-drain", "10-id", f'printf "%s" "$DRAINER_EVENT_ID" > "{out}"\n')
    configure(agent)
    document = {
        "DocumentIncarnation": 1,
        "Events": [
            {
                "EventId": evil,
                "EventType": "Reboot",
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
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert out.read_text() == evil
    assert not pwned.exists()


def test_timeout_kills_a_hook_that_ignores_sigterm_and_its_children(
    agent: Agent, control: EmulatorControl
) -> None:
    pids = agent.tmp / "pids"
    hook(
        agent,
        "pre-drain",
        "10-stubborn",
        (
            "trap '' TERM\n"
            f"(trap '' TERM; exec sleep 300) > /dev/null 2>&1 &\n"
            f'echo $$ $! > "{pids}"\n'
            "while :; do sleep 1; done\n"
        ),
    )
    configure(agent, "timeout = 1.0\nkill_grace = 0.5\n")
    control.schedule("Reboot", ["web-0"])
    started = time.monotonic()
    done = agent.check()
    assert time.monotonic() - started < 20
    assert done.returncode == 1  # pre-drain failed: the drain is aborted and retried
    assert "timed out" in done.stderr
    leader, child = map(int, pids.read_text().split())
    assert not _alive(leader)
    assert not _alive(child)
    assert agent.status()["vm"]["drain_state"] == "draining"


def test_output_capture_is_bounded_and_balanced(agent: Agent, control: EmulatorControl) -> None:
    hook(
        agent,
        "pre-drain",
        "10-chatty",
        'echo FIRST-LINE; i=0; while [ $i -lt 20000 ]; do echo "noise line $i"; i=$((i+1)); done; '
        "echo LAST-LINE; echo ERR-START >&2; exit 0\n",
    )
    configure(agent, "output_limit = 1024\n")
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    (ran,) = [r for r in log_records(done.stderr) if r["event"] == "hook ran"]
    assert ran["stdout"].startswith("FIRST-LINE")
    assert ran["stdout"].rstrip().endswith("LAST-LINE")
    assert "output truncated" in ran["stdout"]
    assert len(ran["stdout"].encode()) < 1024 + 64
    assert ran["stderr"].strip() == "ERR-START"


def test_failing_pre_drain_aborts_by_default(agent: Agent, control: EmulatorControl) -> None:
    hook(agent, "pre-drain", "10-fail", "echo cannot drain now >&2; exit 3\n")
    after = hook(agent, "post-drain", "10-after", f'touch "{agent.tmp / "after"}"\n')
    configure(agent)
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    assert "pre-drain hook failed: 10-fail: exit 3" in done.stderr
    assert agent.status()["vm"]["drain_state"] == "draining"
    assert not (agent.tmp / "after").exists()
    assert after.exists()


def test_failing_pre_drain_continues_when_configured(agent: Agent, control: EmulatorControl) -> None:
    hook(agent, "pre-drain", "10-fail", "exit 3\n")
    configure(agent, 'on_failure = "continue"\n')
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert any("draining anyway" in r["event"] for r in log_records(done.stderr))


def test_failing_post_drain_is_retried_on_the_next_run(agent: Agent, control: EmulatorControl) -> None:
    flag = agent.tmp / "ok-now"
    count = agent.tmp / "count"
    hook(agent, "post-drain", "10-flaky", f'echo x >> "{count}"; [ -e "{flag}" ]\n')
    configure(agent)
    control.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0  # the drain itself succeeded
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert agent.check().returncode == 0
    assert len(count.read_text().split()) == 2  # retried
    flag.touch()
    assert agent.check().returncode == 0
    assert agent.check().returncode == 0
    assert len(count.read_text().split()) == 3  # succeeded on the third run, then no more


def test_failing_pre_restore_never_keeps_the_vm_out(agent: Agent, control: EmulatorControl) -> None:
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1"])
    hook(agent, "pre-restore", "10-fail", "exit 1\n")
    configure(agent, method="")
    event_id = control.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    control.remove(event_id)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert agent.status()["vm"]["in_rotation"] is True
    assert "web-0-nic" in next(iter(control.membership().values()))


def test_on_event_runs_for_every_new_event(agent: Agent, control: EmulatorControl) -> None:
    seen = agent.tmp / "events"
    hook(
        agent,
        "on-event",
        "10-note",
        f'echo "$DRAINER_EVENT_ID $DRAINER_EVENT_TYPE $DRAINER_EVENT_CONCERNS_VM" >> "{seen}"\n',
    )
    configure(agent)
    mine = control.schedule("Reboot", ["web-0"])
    other = control.schedule("Redeploy", ["web-2"])
    assert agent.check().returncode == 0
    assert agent.check().returncode == 0  # nothing new: no second call
    assert sorted(seen.read_text().splitlines()) == sorted([f"{mine} Reboot 1", f"{other} Redeploy 0"])


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ("#!/nonexistent/interpreter\n", "#! line"),
        ("#!/bin/sh\nexit 127\n", "exit 127"),
        ("#!/bin/sh\nexit 126\n", "exit 126"),
    ],
)
def test_exit_126_127_and_bad_interpreters_get_a_hint(
    agent: Agent, control: EmulatorControl, body: str, hint: str
) -> None:
    path = hook(agent, "pre-drain", "10-broken", "")
    path.write_text(body)
    configure(agent)
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1
    (failed,) = [r for r in log_records(done.stderr) if r["event"] == "hook failed"]
    assert hint in failed["hint"]


def test_unsafe_hooks_are_refused_and_config_check_says_why(agent: Agent, control: EmulatorControl) -> None:
    ran = agent.tmp / "ran"
    hook(agent, "pre-drain", "10-group-writable", f'touch "{ran}"\n', mode=0o775)
    other = hook(agent, "post-drain", "10-not-mine", f'touch "{ran}"\n')
    os.chown(other, 65534, 65534)
    configure(agent)
    checked = agent.run("config", "check")
    assert checked.returncode == 2
    assert "pre-drain/10-group-writable" in checked.stderr and "group-writable" in checked.stderr
    assert "post-drain/10-not-mine" in checked.stderr and "uid 65534" in checked.stderr
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 1  # a refused pre-drain hook counts as a failed one: the drain waits
    assert not ran.exists()


def test_unsafe_config_file_is_refused(agent: Agent) -> None:
    configure(agent)
    done = subprocess_run(agent, "config", "check")
    assert done.returncode == 2
    assert "world-writable" in done.stderr and str(agent.config_path) in done.stderr


def subprocess_run(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    env = agent.env()
    agent.config_path.chmod(0o666)  # after env() wrote it
    return subprocess.run(
        [sys.executable, str(ENTRY), *args], env=env, capture_output=True, text=True, check=False
    )


def test_hooks_list_shows_order_builtins_and_skips(agent: Agent) -> None:
    hook(agent, "pre-drain", "20-second", "exit 0\n")
    hook(agent, "pre-drain", "10-first", "exit 0\n")
    hook(agent, "pre-drain", "10-first~", "exit 0\n")
    hook(agent, "pre-drain", "30-disabled", "exit 0\n", mode=0o644)
    hook(agent, "post-restore", "10-back", "exit 0\n")
    configure(agent)
    done = agent.run("hooks", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    order = [line.strip().split()[0] for line in lines if line.startswith("  ")]
    assert order[:6] == [
        "[built-in]",  # the fleet's floor: a held drain runs no hook
        "pre-drain/10-first",
        "pre-drain/20-second",
        "pre-drain/10-first~",
        "pre-drain/30-disabled",
        "[built-in]",
    ]
    assert "editor/package backup" in done.stdout
    assert "not executable" in done.stdout
    assert "post-restore/10-back" in done.stdout


def test_dry_run_tells_hooks(agent: Agent, control: EmulatorControl) -> None:
    out = agent.tmp / "dry"
    hook(agent, "pre-drain", "10-dry", f'echo "$DRAINER_DRY_RUN" > "{out}"\n')
    configure(agent)
    control.schedule("Reboot", ["web-0"])
    assert agent.check("--dry-run").returncode == 0
    assert out.read_text().strip() == "1"


def _alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping PID 1 counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
