"""The table of keys (drainer/config/schema.py) is the one place: the sections' fields, the parser,
`config show`, docs/configuration.md and config.example.toml all agree with it."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from drainer.config import SECTIONS, TABLES, Config, Key, from_mapping
from drainer.config.docs import REGENERATE, markdown
from drainer.config.parse import value_of
from drainer.config.schema import SECTION_TYPES
from drainer.config.show import as_tables, value_in
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEYS = [key for table in TABLES for key in table.keys]


def _leaves(data: Mapping[str, Any], table: str = "") -> Iterator[tuple[str, str, Any]]:
    """(table, key, value) of every key of a decoded TOML document, in the file's order."""
    for name, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{table}.{name}" if table else name)
        else:
            yield table, name, value


def _as_toml(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_the_example_file_sets_every_key_of_the_table_to_its_default_and_nothing_else() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    written = {(t, k): v for t, k, v in _leaves(example)}
    table = {(key.table, key.name): _as_toml(key.default) for key in KEYS}
    assert sorted(set(table) - set(written)) == [], "keys missing from config.example.toml"
    assert sorted(set(written) - set(table)) == [], "keys of config.example.toml that drainer does not know"
    for where, default in table.items():
        value = written[where]
        # the same value and the same TOML type (30 is not 30.0)
        assert (value, type(value)) == (default, type(default)), (
            f"{where}: example {value!r}, default {default!r}"
        )
    assert list(written) == list(table), "config.example.toml lists the keys in another order than the table"
    for table_ in TABLES:
        if table_.name:
            assert f"\n[{table_.name}]\n" in (ROOT / "config.example.toml").read_text(), table_.name


def test_docs_configuration_md_is_current() -> None:
    path = ROOT / "docs" / "configuration.md"
    current = path.read_text() if path.exists() else ""
    assert current == markdown(), f"docs/configuration.md is stale: regenerate it with `{REGENERATE}`"


def test_the_docs_name_every_key_with_its_default() -> None:
    text = markdown()
    for table in TABLES:
        assert f"## [{table.name}]" in text or not table.name
    for key in KEYS:
        assert f"| `{key.name}` | " in text, key.dotted


def test_every_field_of_every_section_is_a_key_of_the_table() -> None:
    names = {t.name: {k.name for k in t.keys} for t in TABLES}
    for section, kind in SECTION_TYPES.items():
        fields = set(kind._fields)  # type: ignore[attr-defined]
        subtables = {t.partition(".")[2] for t in names if t.startswith(f"{section}.")}
        assert fields == names[section] | subtables, section
    assert set(Config._fields) == {"source", "vm_name"} | names[""] | set(SECTION_TYPES)
    assert set(SECTIONS) == set(SECTION_TYPES) | {"vm"}
    for table in ("policy.actions", "policy.restore_when"):
        section, _, field = table.partition(".")
        assert set(getattr(getattr(Config(), section), field)) == names[table]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.dotted)
def test_every_default_passes_its_own_rule(key: Key) -> None:
    shown = key.shown or (lambda value: value)  # (a key the config holds in another form)
    assert shown(value_of(key, _as_toml(key.default))) == key.default
    if key.check is not None:  # (value_of skips the check for the default itself)
        assert shown(key.check.run(_as_toml(key.default))) == key.default
    assert key.meaning


def test_the_defaults_load_without_a_problem_and_are_the_sections_defaults() -> None:
    assert from_mapping({}, "<defaults>") == Config()
    everything: dict[str, Any] = {}
    for key in KEYS:
        node = everything
        for part in key.table.split(".") if key.table else ():
            node = node.setdefault(part, {})
        node[key.name] = _as_toml(key.default)
    assert from_mapping(everything, "x") == Config(source="x")


def test_config_show_lays_out_every_key_as_the_file_does() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    shown = as_tables(Config())
    assert list(_leaves(shown)) == list(_leaves(example))
    assert shown["hooks"]["timeouts"] == {}
    config = from_mapping({"vm": {"name": "web-0"}, "hooks": {"timeouts": {"pre-drain/x": 5}}}, "x")
    assert as_tables(config)["vm"]["name"] == "web-0"
    assert as_tables(config)["hooks"]["timeouts"] == {"pre-drain/x": 5.0}
    assert value_in(config, next(k for k in KEYS if k.dotted == "policy.actions.Reboot")) == "drain"
