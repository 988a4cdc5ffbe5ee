"""`drainer history` as a timeline: every attempt (failed writes, held drains) and every hook run with
its outcome, each with its date, so that a gap between draining and drained has its reason."""

from __future__ import annotations

import json

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent


def _hook(agent: Agent, phase: str, name: str, body: str) -> None:
    directory = agent.tmp / "hooks" / phase
    directory.mkdir(parents=True, exist_ok=True)
    (agent.tmp / "hooks").chmod(0o755)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_every_attempt_and_hook_run_is_in_the_history(agent: Agent, pool: EmulatorControl) -> None:
    # No floor: its intent write would take the ARM failure below before the hook runs.
    hooks = agent.tmp / "hooks"
    agent.config_text = DEFAULT_CONFIG + f'\n[hooks]\ndir = "{hooks}"\n[drain]\nmin_in_service = 0\n'
    _hook(agent, "pre-drain", "10-stop", "exit 3\n")  # the first drain is aborted by its hook
    pool.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 1
    _hook(agent, "pre-drain", "10-stop", "exit 0\n")
    pool.fail_next_lro(1)  # the second attempt fails at ARM
    assert agent.check().returncode == 1
    assert agent.check().returncode == 0  # the third drains
    lines = json.loads(agent.run("history", "--json").stdout)
    seen = [(h["subject"], h["from_state"], h["to_state"]) for h in lines]
    hook_runs = [s for s in seen if s[0] == "hook"]
    assert hook_runs == [
        ("hook", "pre-drain/10-stop", "exit 3"),
        ("hook", "pre-drain/10-stop", "ok"),
        ("hook", "pre-drain/10-stop", "ok"),
    ], seen
    failed = [h for h in lines if h["to_state"] == "drain failed"]
    assert [h["reason"].split(":")[0] for h in failed] == ["attempt 1", "attempt 2"], failed
    assert "pre-drain hook failed" in failed[0]["reason"]
    last_failure = max(i for i, h in enumerate(lines) if h["to_state"] == "drain failed")
    assert seen.index(("vm", "draining", "drained")) > last_failure
    assert all(h["at"] for h in lines)
    text = agent.run("history").stdout
    assert "pre-drain/10-stop -> exit 3" in text
    assert "draining -> drain failed  (attempt 1: " in text
