"""Path trust and hooks under control (issue 12, items 2, 3, 4 and 6), through the CLI: each unsafe
set-up is refused with its path and reason while a safe root-owned chain still runs; a hook that
ignores a large stdin dies at its timeout with a setsid grandchild; planted symlinks at the files
drainer writes leave their targets untouched. The tests run as root and give other users' ownership
with os.chown (uid 65534, nobody)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent, log_records

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates files owned by other users")


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def setup_hooks(agent: Agent, hooks: Path, extra: str = "") -> Path:
    """A safe chain: ``hooks``/pre-drain/10-safe (root, 0755) that leaves a marker."""
    marker = agent.tmp / "safe-ran"
    script(hooks / "pre-drain" / "10-safe", f'touch "{marker}"\n')
    agent.config_text = DEFAULT_CONFIG + f'\n[drain]\nmethod = "log"\n\n[hooks]\ndir = "{hooks}"\n' + extra
    return marker


def _link_to_root_script_in_user_dir(agent: Agent, hooks: Path) -> tuple[Path, str]:
    user_dir = agent.tmp / "userdir"
    target = script(user_dir / "real", "exit 0\n")
    os.chown(user_dir, NOBODY, NOBODY)
    (hooks / "pre-drain" / "20-link").symlink_to(target)
    return user_dir, "owned by uid 65534"


def _user_writable_parent_above_hooks(agent: Agent, hooks: Path) -> tuple[Path, str]:
    os.chown(hooks.parent, NOBODY, NOBODY)
    return hooks.parent, "owned by uid 65534"


def _sticky_world_writable_hooks_dir(agent: Agent, hooks: Path) -> tuple[Path, str]:
    hooks.chmod(0o1777)
    return hooks, "world-writable (mode 1777; sticky"


def _sticky_world_writable_phase_dir(agent: Agent, hooks: Path) -> tuple[Path, str]:
    (hooks / "pre-drain").chmod(0o1777)
    return hooks / "pre-drain", "world-writable (mode 1777; sticky"


def _hook_owned_by_a_user(agent: Agent, hooks: Path) -> tuple[Path, str]:
    path = script(hooks / "pre-drain" / "20-user", "exit 0\n")
    os.chown(path, NOBODY, NOBODY)
    return path, "owned by uid 65534"


def _group_writable_hook(agent: Agent, hooks: Path) -> tuple[Path, str]:
    path = script(hooks / "pre-drain" / "20-group", "exit 0\n", mode=0o775)
    return path, "group-writable (mode 0775)"


def _sticky_ancestor_with_a_user_owned_child(agent: Agent, hooks: Path) -> tuple[Path, str]:
    # /tmp-like: sticky and root-owned, but the next component is a user's: refused.
    return hooks.parent, "owned by uid 65534"


def _health_command_in_a_user_dir(agent: Agent, hooks: Path) -> tuple[Path, str]:
    user_dir = agent.tmp / "userbin"
    target = script(user_dir / "check-health", "exit 0\n")
    os.chown(user_dir, NOBODY, NOBODY)
    agent.config_text += f'\n[restore]\nhealth_command = ["{target}"]\n'
    return user_dir, "owned by uid 65534"


def _state_dir_writable_by_others(agent: Agent, hooks: Path) -> tuple[Path, str]:
    agent.state_dir.mkdir()
    agent.state_dir.chmod(0o777)
    return agent.state_dir, "world-writable (mode 0777)"


def _sticky_state_dir(agent: Agent, hooks: Path) -> tuple[Path, str]:
    agent.state_dir.mkdir()
    agent.state_dir.chmod(0o1777)
    return agent.state_dir, "world-writable (mode 1777; sticky"


def _flag_dir_writable_by_others(agent: Agent, hooks: Path) -> tuple[Path, str]:
    flag_dir = agent.tmp / "run"
    flag_dir.mkdir(mode=0o777)
    flag_dir.chmod(0o777)
    agent.config_text = agent.config_text.replace('method = "log"', 'method = "probe"')
    agent.config_text += f'\n[probe]\nflag_file = "{flag_dir / "out-of-rotation"}"\n'
    return flag_dir, "world-writable (mode 0777)"


UNSAFE: dict[str, Callable[[Agent, Path], tuple[Path, str]]] = {
    "symlink to a root script in a user's dir": _link_to_root_script_in_user_dir,
    "user-owned parent above the hooks dir": _user_writable_parent_above_hooks,
    "sticky world-writable hooks dir": _sticky_world_writable_hooks_dir,
    "sticky world-writable phase dir": _sticky_world_writable_phase_dir,
    "hook owned by a user": _hook_owned_by_a_user,
    "group-writable hook": _group_writable_hook,
    "sticky ancestor, user-owned child": _sticky_ancestor_with_a_user_owned_child,
    "health command in a user's dir": _health_command_in_a_user_dir,
    "state dir writable by others": _state_dir_writable_by_others,
    "sticky state dir": _sticky_state_dir,
    "flag dir writable by others": _flag_dir_writable_by_others,
}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_each_unsafe_setup_is_refused_with_its_path_and_reason(agent: Agent, name: str) -> None:
    if name == "sticky ancestor, user-owned child":
        sticky = agent.tmp / "sticky"
        sticky.mkdir()
        sticky.chmod(0o1777)
        hooks = sticky / "user" / "hooks.d"
        setup_hooks(agent, hooks)
        os.chown(sticky / "user", NOBODY, NOBODY)
    else:
        hooks = agent.tmp / "etc" / "hooks.d"
        setup_hooks(agent, hooks)
    path, reason = UNSAFE[name](agent, hooks)
    checked = agent.run("config", "check")
    assert checked.returncode == 2, checked.stderr
    lines = [line for line in checked.stderr.splitlines() if line.startswith("drainer: refused:")]
    assert any(f"{path}: {reason}" in line for line in lines), checked.stderr


def test_refused_hooks_do_not_run_while_the_safe_chain_does(agent: Agent, control: EmulatorControl) -> None:
    hooks = agent.tmp / "etc" / "hooks.d"
    marker = setup_hooks(agent, hooks, '\n[hooks.timeouts]\n"post-drain/10-link" = 5\n')
    ran = agent.tmp / "unsafe-ran"
    user_dir = agent.tmp / "userdir"
    target = script(user_dir / "real", f'touch "{ran}"\n')
    os.chown(user_dir, NOBODY, NOBODY)
    (hooks / "post-drain").mkdir()
    (hooks / "post-drain" / "10-link").symlink_to(target)
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert marker.exists(), done.stderr
    assert not ran.exists()
    refused = [r for r in log_records(done.stderr) if r.get("hook") == "10-link"]
    assert refused and "owned by uid 65534" in refused[0]["reason"], done.stderr


def test_a_sticky_root_owned_ancestor_with_a_root_owned_child_is_accepted(
    agent: Agent, control: EmulatorControl
) -> None:
    sticky = agent.tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    hooks = sticky / "drainer" / "hooks.d"
    marker = setup_hooks(agent, hooks)
    (sticky / "drainer").chmod(0o755)
    checked = agent.run("config", "check")
    assert checked.returncode == 0, checked.stderr
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_a_config_file_in_a_user_owned_dir_is_refused(agent: Agent) -> None:
    conf_dir = agent.tmp / "conf"
    conf_dir.mkdir()
    config = conf_dir / "config.toml"
    config.write_text(DEFAULT_CONFIG)
    os.chown(conf_dir, NOBODY, NOBODY)
    done = agent.run("config", "check", DRAINER_CONFIG=str(config))
    assert done.returncode == 2
    assert f"refused: {conf_dir}: owned by uid 65534" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_hook_ignoring_a_large_stdin_dies_at_its_timeout_with_its_setsid_grandchild(
    agent: Agent, control: EmulatorControl
) -> None:
    hooks = agent.tmp / "hooks"
    grandchild = agent.tmp / "grandchild.pid"
    script(
        hooks / "pre-drain" / "10-stubborn",
        f'setsid sh -c \'echo $$ > "{grandchild}.tmp"; mv "{grandchild}.tmp" "{grandchild}"; '
        "exec sleep 300' </dev/null >/dev/null 2>&1 &\n"
        "exec sleep 300\n",
    )
    agent.config_text = (
        DEFAULT_CONFIG
        + f'\n[drain]\nmethod = "log"\n\n[hooks]\ndir = "{hooks}"\ntimeout = 3.0\nkill_grace = 1.0\n'
    )
    # A document well over a pipe's 64 KiB: many resources (a large scale set).
    resources = ["web-0"] + [f"scaleset-with-a-long-name_{i:05d}" for i in range(4000)]
    control.schedule("Reboot", resources)
    done = agent.check(timeout=60)
    assert grandchild.exists()
    pid = int(grandchild.read_text())
    try:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)
    timed_out = [
        r
        for r in log_records(done.stderr)
        if r.get("event") == "hook timed out; its process group was killed"
    ]
    assert timed_out and timed_out[0]["seconds"] < 3.0 + 1.0 + 5.0, done.stderr


def _target(agent: Agent) -> tuple[Path, bytes, os.stat_result]:
    outside = agent.tmp / "precious"
    outside.mkdir(exist_ok=True)
    target = outside / "target"
    target.write_bytes(b"root's precious file\n")
    target.chmod(0o644)
    return target, target.read_bytes(), target.stat()


@pytest.mark.parametrize("planted", ["lock", "state.db", "metrics.json.new", "flag.new", "textfile"])
def test_a_planted_symlink_leaves_its_target_untouched(
    agent: Agent, control: EmulatorControl, planted: str
) -> None:
    target, content, before = _target(agent)
    flag_dir = agent.tmp / "run"
    flag_dir.mkdir()
    textfile = agent.tmp / "textfiles" / "drainer.prom"
    textfile.parent.mkdir()
    agent.config_text = (
        DEFAULT_CONFIG
        + '\n[drain]\nmethod = "probe"\n'
        + f'\n[probe]\nflag_file = "{flag_dir / "flag"}"\n'
        + f'\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    )
    agent.state_dir.mkdir(mode=0o750)
    where = {
        "lock": agent.state_dir / "lock",
        "state.db": agent.state_dir / "state.db",
        "metrics.json.new": agent.state_dir / "metrics.json.new",
        "flag.new": flag_dir / "flag.new",
        "textfile": textfile,
    }[planted]
    where.symlink_to(target)
    control.schedule("Reboot", ["web-0"])
    done = agent.check()
    agent.check()
    assert target.read_bytes() == content, done.stderr
    after = target.stat()
    assert (after.st_mode, after.st_uid, after.st_size) == (before.st_mode, before.st_uid, before.st_size)
    assert stat.S_ISREG(after.st_mode)
    if planted in ("lock", "state.db"):  # refused, saying why
        assert done.returncode != 0
        assert "symlink" in done.stderr
