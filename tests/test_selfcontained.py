"""The repository is all the tests need: a copy of its files, with nothing beside it, collects every
test (the public payloads and scenarios the tests read live in tests/data, with their sources)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _repository_files() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def test_a_copy_with_nothing_beside_it_collects_every_test(tmp_path: Path) -> None:
    solo = tmp_path / "alone" / "drainer"
    for name in _repository_files():
        (solo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, solo / name)
    assert sorted(p.name for p in solo.parent.iterdir()) == ["drainer"]
    here = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    there = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"],
        cwd=solo,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert there.returncode == 0, there.stdout[-3000:] + there.stderr[-3000:]

    def collected(output: str) -> list[str]:
        return [line.split(" in ")[0] for line in output.splitlines() if "tests collected" in line]

    assert collected(there.stdout) == collected(here.stdout) != []
    # The copy's tests import the copy's code, not this checkout's.
    probe = subprocess.run(
        [sys.executable, "-c", "import tests.conftest as c; print(c.DATA)"],
        cwd=solo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == str(solo / "tests" / "data")
