"""Every `drainer` command of the README's quick start, run as written against the emulator (the
`apt`, `az`, `pip`, `python3 -m venv` and `systemctl` lines need a real VM and Azure), with the quick
start's own configuration: what an operator copies must work."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import Agent

README = Path(__file__).resolve().parent.parent / "README.md"
NEEDS_AZURE = ("apt", "az", "systemctl", "journalctl", "python3", "pip")


def _quickstart() -> str:
    text = README.read_text()
    return text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start") + 5)]


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _quickstart(), re.S)


def _commands() -> list[list[str]]:
    """Each command line of the quick start's shell blocks: continuation lines joined, comments cut."""
    commands = []
    for block in _blocks("sh"):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split("  #")[0].strip()
            for part in line.split("&&"):
                argv = shlex.split(part)
                if argv and argv[0] == "sudo":
                    argv = argv[1:]
                if argv:
                    commands.append(argv)
    return commands


def test_the_quick_start_is_short_and_its_config_is_six_lines() -> None:
    assert len(_quickstart().splitlines()) <= 150
    (config,) = _blocks("toml")
    settings = [ln for ln in config.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(settings) == 3 and len(config.strip().splitlines()) == 6
    assert all(Path(argv[0]).name in (*NEEDS_AZURE, "drainer") for argv in _commands())


def test_every_drainer_command_of_the_quick_start_works(agent: Agent, pool: EmulatorControl) -> None:
    (config,) = _blocks("toml")
    agent.config_text = config
    etc = agent.tmp / "etc" / "drainer"
    ran = []
    for argv in _commands():
        if Path(argv[0]).name in NEEDS_AZURE:
            continue
        args = argv[1:]
        if args[:1] == ["setup"]:  # where the quick start writes /etc/drainer and /etc/systemd/system
            kind = args[1]
            args = [*args, "--dir" if kind == "systemd" else "--file"]
            args.append(str(agent.tmp / "units") if kind == "systemd" else str(etc / "config.toml"))
        done = agent.run(*args, timeout=180)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        ran.append(" ".join(["drainer", *argv[1:3]]))
    assert {"drainer setup config", "drainer setup systemd", "drainer config check", "drainer doctor"} <= {
        " ".join(r.split()[:3]) for r in ran
    }, ran
    assert any(r.startswith("drainer demo") for r in ran) and any(r.startswith("drainer status") for r in ran)
    assert (etc / "config.toml").exists() and (agent.tmp / "units" / "drainer.service").exists()


@pytest.mark.parametrize("path", ["docs/configuration.md", "docs/how-drainer-decides.md", "docs/hooks.md"])
def test_the_pages_the_quick_start_points_to_exist(path: str) -> None:
    assert f"]({path})" in _quickstart()
    assert (README.parent / path).is_file()
