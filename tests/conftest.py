"""Fixtures: a live emulator on loopback and a helper that runs the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.zygote import Zygote

# A fixed, bounded profile in CI; `HYPOTHESIS_PROFILE=long` by hand for a deeper search.
settings.register_profile(
    "ci",
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=3000, stateful_step_count=80, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
# Verbatim public payloads and the decision-core scenarios, copied into the repository with their
# sources (tests/data/README.md): a clone runs its tests with nothing beside it.
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = DATA
SCENARIOS = DATA / "scenarios.json"
ENTRY = Path(__file__).resolve().parent / "agent_entry.py"
DEFAULT_CONFIG = """
[policy]
# Runs in the tests follow each other within a second: retry failed actions on every run.
retry_max_seconds = 0

[imds]
deadline = 3.0
read_timeout = 1.0

[azure]
poll_interval = 0.05
deadline = 20.0

[approval]
# The tests of the other features keep events Scheduled; tests/test_approval.py turns it on.
enabled = false
# Not "auto" (the default): the machine's other listeners must not decide when a test approves.
service_ports = []
"""


# The tests that take the longest (seconds to minutes: a .deb build, hypothesis against the emulator,
# real interpreters started together, daemons stopped mid-step, SDK retry back-offs). `./dev quick`
# (pytest -m "not slow") leaves them out; the whole suite runs them first, so the longest do not
# start last and stretch the run.
SLOW = (
    "tests/test_packaging.py::test_deb",
    "tests/test_properties_emulator.py::",
    "tests/test_concurrency.py::",
    "tests/test_selfcontained.py::",
    "tests/test_daemon.py::test_sigterm",
    "tests/test_faults.py::test_fault[identity-500]",
    "tests/test_approval.py::test_multi_vm_event_is_approved_exactly_once",
    "tests/test_demo_and_logging.py::test_demo_runs_from_the_cli",
    "tests/test_operator.py::test_a_standing_warning_is_logged_once_by_the_daemon",
    "tests/test_operator.py::test_the_daemon_records",
    "tests/test_intents.py::test_three_vms",
    "tests/test_intents.py::test_two_vms_every_interleaving_walked",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: twice the CPUs. The tests mostly wait (on drainer processes, IMDS deadlines, the
    emulator's operations), so two workers per CPU keep the CPUs busy: on 2 CPUs the suite takes
    about half the time of one worker per CPU."""
    return 2 * (os.cpu_count() or 1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(["web-0", "web-1", "web-2"]) as running:
        yield running


@pytest.fixture
def control(emulator: RunningEmulator) -> EmulatorControl:
    return EmulatorControl(emulator.url)


@pytest.fixture
def five(emulator: RunningEmulator, control: EmulatorControl) -> str:
    """web-0..web-4 in lb-web/web-pool, the pool's timeline cleared; returns the pool id (the fleet
    tests)."""
    for name in ("web-3", "web-4"):
        control.add_vm(name)
    lb = control.add_load_balancer("lb-web", pools=["web-pool"])
    for name in [f"web-{i}" for i in range(5)]:
        control.join(name, "lb-web", "web-pool")
    control.reset_stats()
    return f"{lb}/backendAddressPools/web-pool"


@pytest.fixture
def pool(control: EmulatorControl) -> EmulatorControl:
    """lb-web with one NIC-based pool, web-pool, holding web-0, web-1 and web-2."""
    control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
    return control


@dataclass
class Agent:
    """Runs ``drainer`` (through tests/agent_entry.py) against the emulator as VM ``vm``."""

    emulator: RunningEmulator
    tmp: Path
    vm: str = "web-0"
    config_text: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    zygote: Zygote | None = None

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.toml"

    def env(self, **overrides: str) -> dict[str, str]:
        # Written only when it changed, and by rename: a daemon starting while a test runs `status`
        # must never read a half-written (empty) file, which is a valid config of all defaults.
        text = self.config_text or DEFAULT_CONFIG
        try:
            current = self.config_path.read_text()
        except FileNotFoundError:
            current = None
        if current != text:
            fresh = self.config_path.with_name(self.config_path.name + ".new")
            fresh.write_text(text)
            fresh.replace(self.config_path)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.tmp),
            "DRAINER_IMDS_ENDPOINT": self.emulator.vm_url(self.vm),
            "DRAINER_ARM_ENDPOINT": self.emulator.url,
            "DRAINER_STATE_DIR": str(self.state_dir),
            "DRAINER_CONFIG": str(self.config_path),
            "PYTHONPATH": str(ROOT),
        }
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """``drainer ARGS`` in a new process: forked from the fork server (tests/zygote.py), or a
        fresh interpreter when the run's imports are under test or DRAINER_TEST_FORK=0."""
        full_env = self.env(**env)
        if self.zygote is not None and "TEST_MODULES_OUT" not in full_env:
            return self.zygote.run(list(args), full_env, timeout)
        return subprocess.run(
            [sys.executable, str(ENTRY), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(*args, "check", **env)

    def status(self) -> dict[str, Any]:
        """``status --json``; its exit code must match its health (1 when failing or stale)."""
        done = self.run("status", "--json")
        assert done.returncode in (0, 1), done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        assert done.returncode == (1 if result["health"] in ("failing", "stale") else 0), result
        return result

    def history(self) -> list[dict[str, Any]]:
        done = self.run("history", "--json")
        assert done.returncode == 0, done.stderr
        result: list[dict[str, Any]] = json.loads(done.stdout)
        return result


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote | None]:
    """One fork server per test process (see tests/zygote.py); DRAINER_TEST_FORK=0 turns it off."""
    if os.environ.get("DRAINER_TEST_FORK", "1") == "0" or not hasattr(os, "fork"):
        yield None
        return
    server = Zygote(tmp_path_factory.mktemp("zygote"))
    yield server
    server.close()


@pytest.fixture
def agent(emulator: RunningEmulator, tmp_path: Path, zygote: Zygote | None) -> Agent:
    return Agent(emulator=emulator, tmp=tmp_path, zygote=zygote)


def log_records(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run (non-JSON lines, such as the CLI's one-line error, are skipped)."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def load_scenarios() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(SCENARIOS.read_text())
    return data
