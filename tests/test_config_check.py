"""`drainer config check` through the real CLI: every problem of a file at once, each on its own line
with the file, the key, the reason and the name probably meant; the shipped configuration checks clean
but for what its operator must decide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drainer.base.errors import EXIT_USAGE, ConfigError
from drainer.config import ApprovalConfig, Config, DrainConfig, from_mapping
from drainer.config.check import findings, waits_for_connections
from tests.conftest import ROOT

EXAMPLE = ROOT / "config.example.toml"
THREE_MISTAKES = """\
[imds]
dedline = 10.0

[polcy]
retry_max_seconds = 0

[drain]
min_in_service = -1
"""


def _drainer(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``drainer ARGS`` in a fresh interpreter, with no DRAINER_* variable of the caller."""
    return subprocess.run(
        [sys.executable, "-m", "drainer", *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_check_reports_every_mistake_of_a_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(THREE_MISTAKES)
    done = _drainer(tmp_path, "--config", str(path), "config", "check")
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr.splitlines() == [  # in the file's order
        f"drainer: error: {path}: imds.dedline: unknown key (did you mean deadline?)",
        f"drainer: error: {path}: polcy: unknown section (did you mean [policy]?)",
        f"drainer: error: {path}: drain.min_in_service: must be between 0 and 1000, or a table of such "
        'floors by pool (its id, "<load balancer>/<pool>", its name, or "*" for the others)',
    ]


def test_other_commands_name_the_first_mistake_and_count_the_others(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(THREE_MISTAKES)
    done = _drainer(tmp_path, "--config", str(path), "status")
    assert done.returncode == EXIT_USAGE
    assert done.stderr.splitlines() == [
        f"drainer: {path}: imds.dedline: unknown key (did you mean deadline?) "
        "(and 2 more: `drainer config check` lists them all)"
    ]


def test_the_shipped_configuration_checks_clean(tmp_path: Path) -> None:
    done = _drainer(tmp_path, "--config", str(EXAMPLE), "config", "check")
    assert done.returncode == 0, done.stderr
    # The one warning a fresh install may show is a decision for its operator: approving maintenance
    # early without waiting for open connections. It goes once [approval] service_ports waits for some
    # by default (e.g. "auto").
    expected = [] if waits_for_connections(ApprovalConfig()) else ["warning: [approval] enabled with no"]
    lines = done.stderr.splitlines()
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(f"drainer: {start}"), line
    assert done.stdout.startswith("drainer: configuration OK")
    assert ("warning" in done.stdout) == bool(expected)


def test_the_defaults_wait_for_connections_and_an_empty_list_warns() -> None:
    assert findings(Config()) == []  # service_ports = "auto" by default
    (only,) = findings(Config(approval=ApprovalConfig(service_ports=())))
    assert only.severity == "warning"
    assert only.message.startswith("[approval] enabled with no [approval] service_ports")
    quiet = Config(approval=ApprovalConfig(service_ports=(443,)))
    assert findings(quiet) == []
    assert findings(quiet._replace(approval=ApprovalConfig(enabled=False, service_ports=()))) == []


def test_a_raised_floor_needs_no_warning_any_more() -> None:
    # Issue 19: the floor is decided from the pools across VMs, with nothing to create.
    quiet = Config(approval=ApprovalConfig(enabled=False))
    assert findings(quiet._replace(drain=DrainConfig(min_in_service={"*": 2}))) == []


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        ({"stat_dir": "/x"}, "stat_dir", "unknown key (did you mean state_dir?)"),
        (
            {"imds": {"poll_interval": 1.0}},
            "imds.poll_interval",
            "(poll_interval is a key of [azure] and [daemon])",
        ),
        ({"policy": {"action": {"Reboot": "drain"}}}, "policy.action", "did you mean [policy.actions]?"),
        (
            {"policy": {"restore_when": {"Reboto": "cleared"}}},
            "policy.restore_when.Reboto",
            "did you mean Reboot?",
        ),
        ({"aproval": {"enabled": False}}, "aproval", "unknown section (did you mean [approval]?)"),
        ({"zzz": {}}, "zzz", "unknown section"),
    ],
)
def test_unknown_names_suggest_the_one_probably_meant(raw: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw, "f.toml")
    assert (info.value.key, len(info.value.problems)) == (key, 1)
    assert reason in info.value.reason


def test_every_kind_of_problem_is_collected() -> None:
    raw = {
        "dry_run": "yes",
        "imds": {"deadline": 0, "timeout": 1},
        "drain": {"method": "magic", "nics": [1]},
        "fleet": {"lease": "nope"},
        "logging": 3,
        "hooks": {"timeouts": {"bogus": 5, "pre-drain/x": "long"}},
    }
    with pytest.raises(ConfigError) as info:
        from_mapping(raw, "f.toml")
    found = [(p.key, p.reason.split(" (")[0]) for p in info.value.problems]
    assert found == [
        ("dry_run", "must be a bool, not str"),
        ("imds.deadline", "must be between 0.1 and 3600"),
        ("imds.timeout", "unknown key"),
        ("drain.method", "must be one of nic, admin-state, probe, log"),
        ("drain.nics", "must be a list of NIC names or resource ids"),
        (
            "fleet.lease",
            "is no longer used: the floor is decided from the pools themselves, with nothing to create",
        ),
        ("logging", "must be a table"),
        (
            "hooks.timeouts.bogus",
            'must be "<phase>/<hook name>" with a phase of on-event, pre-drain, '
            "post-drain, pre-restore, post-restore",
        ),
        ("hooks.timeouts.pre-drain/x", "must be a float, not str"),
    ]
    assert all(p.path == "f.toml" and p.problems == (p,) for p in info.value.problems)
    assert str(info.value).endswith("(and 8 more: `drainer config check` lists them all)")


def test_a_check_across_keys_is_skipped_when_a_key_it_reads_was_refused() -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"imds": {"deadline": "soon", "connect_timeout": 5.0}}, "f.toml")
    # not "imds.deadline must be at least imds.connect_timeout" as well
    assert [p.key for p in info.value.problems] == ["imds.deadline"]
