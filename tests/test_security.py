"""Security habits checked mechanically: no shell strings anywhere, ruff's bandit rules on, IMDS never
through a proxy (tests/test_imds.py, tests/test_lb.py), no token in logs (tests/test_faults.py)."""

from __future__ import annotations

import re

from tests.conftest import ROOT

SOURCES = sorted((ROOT / "drainer").rglob("*.py"))


def test_no_shell_strings() -> None:
    pattern = re.compile(
        r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|commands\.getoutput"
    )
    offenders = [
        f"{p}:{n}"
        for p in SOURCES
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_bandit_rules_are_enabled_for_the_package() -> None:
    config = (ROOT / "pyproject.toml").read_text()
    select = config.split("select = [", 1)[1].split("]", 1)[0]
    assert '"S"' in select  # flake8-bandit, run by `ruff check` in ./dev test
    ignores = config.split("[tool.ruff.lint.per-file-ignores]", 1)[1].split("\n[", 1)[0]
    assert '"drainer/' not in ignores.replace('"drainer/emulator/server.py" = ["N815"]', "")


def test_every_subprocess_call_is_argv() -> None:
    calls = [
        (p, line)
        for p in SOURCES
        for line in p.read_text().splitlines()
        if "subprocess." in line and "(" in line and "import" not in line
    ]
    for path, line in calls:
        code = line.split("#", 1)[0]  # comments may say "never a shell"
        assert "shell" not in code, f"{path}: {line}"
