"""Config loading: the example file, defaults, overrides and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from drainer.base.errors import ConfigError
from drainer.config import Config, from_mapping
from drainer.io.configfile import load
from tests.conftest import ROOT

EXAMPLE = ROOT / "config.example.toml"


def test_example_file_is_valid_and_states_the_defaults() -> None:
    loaded = load(str(EXAMPLE), environ={})
    assert loaded._replace(source="x") == Config(source="x")


def test_example_file_mentions_every_option() -> None:
    text = EXAMPLE.read_text()
    for section in ("imds", "policy", "drain", "azure", "fleet", "approval", "logging"):
        assert f"[{section}]" in text
        for name in getattr(Config(), section)._fields:
            assert f"\n{name} = " in text or f"[{section}.{name}]" in text, f"{section}.{name}"
    for name in ("state_dir", "dry_run"):
        assert f"\n{name} = " in text
    assert "[vm]\n" in text


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert load(None, environ={}).source in ("<defaults>", "/etc/drainer/config.toml")


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(str(tmp_path / "nope.toml"), environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load(None, environ={"DRAINER_CONFIG": str(tmp_path / "nope.toml")})


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('state_dir = "/from/file"\n')
    config = load(
        str(path),
        environ={"DRAINER_IMDS_ENDPOINT": "http://127.0.0.1:9/", "DRAINER_STATE_DIR": "/from/env"},
    )
    assert config.imds.endpoint == "http://127.0.0.1:9"
    assert config.state_dir == "/from/env"
    with pytest.raises(ConfigError, match=r"DRAINER_IMDS_ENDPOINT.*http\(s\) URL"):
        load(str(path), environ={"DRAINER_IMDS_ENDPOINT": "ftp://x"})


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("bogus = 1\n", "bogus", "unknown key"),
        ("[imds]\ntimeout = 1\n", "imds.timeout", "unknown key"),
        ("[imds]\ndeadline = 'soon'\n", "imds.deadline", "must be a float, not str"),
        ("[imds]\ndeadline = 0\n", "imds.deadline", "between"),
        ("[azure]\nmax_call_burst = 0\n", "azure.max_call_burst", "between"),
        ("[imds]\nendpoint = 'not a url'\n", "imds.endpoint", "http(s) URL"),
        ("[imds]\nconnect_timeout = 50.0\ndeadline = 10.0\n", "imds.deadline", "at least"),
        ("[policy]\nlead_time_seconds = -5\n", "policy.lead_time_seconds", "between"),
        ("[policy]\nlead_time_seconds = true\n", "policy.lead_time_seconds", "must be a int"),
        ("[policy.actions]\nHibernate = 'drain'\n", "policy.actions.Hibernate", "unknown key"),
        ("[policy.actions]\nReboot = 'maybe'\n", "policy.actions.Reboot", "one of drain, ignore"),
        ("[drain]\nmethod = 'magic'\n", "drain.method", "one of nic, admin-state, probe, log"),
        ("[drain]\nnics = [1]\n", "drain.nics", "list of NIC names"),
        ("[drain]\nmin_in_service = -1\n", "drain.min_in_service", "between"),
        ("[azure]\narm_endpoint = 'http://management.example.com'\n", "azure.arm_endpoint", "must use https"),
        ("[azure]\nidentity = 'password'\n", "azure.identity", "one of managed, default"),
        ("[hooks]\non_failure = 'maybe'\n", "hooks.on_failure", "one of abort, continue"),
        ('[hooks.timeouts]\n"bogus" = 5\n', "hooks.timeouts.bogus", "<phase>/<hook name>"),
        ('[hooks.timeouts]\n"pre-drain/x" = "long"\n', "hooks.timeouts.pre-drain/x", "must be a float"),
        ("[logging]\nlevel = 'loud'\n", "logging.level", "one of"),
        ("dry_run = 'yes'\n", "dry_run", "must be a bool"),
        ("imds = 3\n", "imds", "must be a table"),
        ("state_dir = ''\n", "state_dir", "must not be empty"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(str(path), environ={})
    assert info.value.path == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[imds\n")
    with pytest.raises(ConfigError) as info:
        load(str(path), environ={})
    assert str(path) in str(info.value)
    assert "invalid TOML" in str(info.value)
    assert "line 1" in str(info.value)


def test_arm_endpoint_http_only_on_loopback(tmp_path: Path) -> None:
    assert load(None, environ={"DRAINER_ARM_ENDPOINT": "http://127.0.0.1:8169"}).azure.arm_endpoint == (
        "http://127.0.0.1:8169"
    )
    assert (
        load(None, environ={"DRAINER_ARM_ENDPOINT": "http://[::1]:80/"}).azure.arm_endpoint
        == "http://[::1]:80"
    )
    with pytest.raises(ConfigError, match=r"DRAINER_ARM_ENDPOINT.*https"):
        load(None, environ={"DRAINER_ARM_ENDPOINT": "http://10.0.0.1"})


def test_integers_are_accepted_where_floats_are_expected() -> None:
    assert from_mapping({"imds": {"deadline": 12}}, "m").imds.deadline == 12.0
