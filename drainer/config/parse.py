"""From a decoded TOML mapping to a ``Config``, driven by the table (``drainer.config.schema``).

Every problem of a file is collected, not only the first: unknown keys and sections (with the name
that was probably meant), wrong types, out-of-range values, refused values, and the checks across
keys. ``from_mapping`` raises one ``ConfigError`` carrying them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from drainer.base.errors import ConfigError
from drainer.config.schema import DEFAULTS, SECTION_TYPES, TABLES, Key, Table
from drainer.config.sections import Config
from drainer.config.values import InvalidValueError


def from_mapping(raw: Mapping[str, Any], path: str) -> Config:
    """Build a Config from a decoded TOML mapping.

    Raises ConfigError naming the first problem's key and reason, with every problem in ``problems``.
    """
    config, problems = parse(raw, path)
    if problems:
        raise ConfigError.of(problems)
    return config


def parse(raw: Mapping[str, Any], path: str) -> tuple[Config, list[ConfigError]]:
    """The Config of ``raw`` (a refused value left at its default) and every problem found, in the
    order of the file. Raises nothing."""
    problems: list[ConfigError] = []
    given: dict[str, dict[str, Any]] = {}
    tables: dict[str, Mapping[str, Any]] = {"": raw}
    for table in TABLES:
        data = _table_data(table.name, tables, path, problems)
        if data is None:
            continue
        tables[table.name] = data
        given[table.name] = _read_table(table, data, path, problems)
    config = _assemble(given, path)
    _across(config, path, problems)
    problems.sort(key=lambda p: _position(raw, p.key))  # stable: the table's order within a table
    return config, problems


def _position(raw: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """Where ``key`` (dotted) is written in the file: the index of each of its parts in its table, as far
    as they are found (tomllib keeps the file's order)."""
    position = []
    data: object = raw
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            position.append(len(data) if isinstance(data, Mapping) else 0)
            break
        position.append(list(data).index(part))
        data = data[part]
    return tuple(position)


def _table_data(
    name: str, tables: Mapping[str, Mapping[str, Any]], path: str, problems: list[ConfigError]
) -> Mapping[str, Any] | None:
    """The raw mapping of table ``name``: empty when absent, None when its parent or itself is not a
    table (then a problem says so, once)."""
    if not name:
        return tables[""]
    parent, _, child = name.rpartition(".")
    above = tables.get(parent)
    if above is None:
        return None  # the parent is not a table: already reported
    data = above.get(child, {})
    if not isinstance(data, dict):
        problems.append(ConfigError(path, name, "must be a table"))
        return None
    return data


def _read_table(
    table: Table, data: Mapping[str, Any], path: str, problems: list[ConfigError]
) -> dict[str, Any]:
    """The checked values of the keys ``data`` sets (refused ones left out, with a problem each)."""
    found: dict[str, Any] = {}
    for key in table.keys:
        if key.name in data:
            try:
                found[key.name] = value_of(key, data[key.name])
            except InvalidValueError as exc:
                problems.append(ConfigError(path, key.dotted, str(exc)))
    known = _KNOWN[table.name]
    for name in data:
        if name in known:
            continue
        dotted = f"{table.name}.{name}" if table.name else name
        if table.any_name is None or table.any_key is None:
            problems.append(ConfigError(path, dotted, _unknown(table, name, data[name])))
            continue
        try:
            found[table.any_name.run(name)] = value_of(table.any_key, data[name])
        except InvalidValueError as exc:
            problems.append(ConfigError(path, dotted, str(exc)))
    return found


def value_of(key: Key, value: Any) -> Any:
    """``value`` checked against ``key``'s type, range, choices and check: what to keep.

    Raises InvalidValueError.
    """
    kind = key.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # (a bool is an int to isinstance, not to TOML; and not narrowed: the type is only known at run time)
    of_kind = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not of_kind:
        raise InvalidValueError(f"must be a {kind.__name__}, not {type(value).__name__}")
    if key.low is not None and key.high is not None and not key.low <= value <= key.high:
        raise InvalidValueError(f"must be between {_number(key.low)} and {_number(key.high)}")
    if key.choices and value not in key.choices:
        raise InvalidValueError(f"must be one of {', '.join(key.choices)}")
    # The default needs no check (it is ours, and tested): the usual file, config.example.toml with a few
    # changes, then costs no URL parsing.
    if key.check is not None and (value != key.default or key.shown is not None):
        return key.check.run(value)
    return tuple(value) if kind is list else value


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _children_of(name: str) -> frozenset[str]:
    prefix = f"{name}." if name else ""
    return frozenset(
        t.name[len(prefix) :]
        for t in TABLES
        if t.name != name and t.name.startswith(prefix) and "." not in t.name[len(prefix) :]
    )


# The tables directly inside each table, and every name each table knows.
_CHILDREN = {t.name: _children_of(t.name) for t in TABLES}
_KNOWN = {t.name: _CHILDREN[t.name] | {k.name for k in t.keys} for t in TABLES}


# Keys an earlier release had, and why they are gone.
_RETIRED = {
    ("fleet", "lease"): "is no longer used: the floor is decided from the pools themselves, with nothing "
    "to create (docs/fleet-model.md); remove it",
}


def _unknown(table: Table, name: str, value: object) -> str:
    """Why ``name`` is refused in ``table``, with the name probably meant."""
    import difflib  # noqa: PLC0415 - only for a mistake

    if (table.name, name) in _RETIRED:
        return _RETIRED[table.name, name]

    where = f"{table.name}." if table.name else ""
    if isinstance(value, dict):
        close = difflib.get_close_matches(name, sorted(_CHILDREN[table.name]), n=1)
        return "unknown section" + (f" (did you mean [{where}{close[0]}]?)" if close else "")
    close = difflib.get_close_matches(name, [k.name for k in table.keys], n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    homes = [
        f"[{t.name}]" if t.name else "the top level" for t in TABLES if any(k.name == name for k in t.keys)
    ]
    return "unknown key" + (f" ({name} is a key of {' and '.join(homes)})" if homes else "")


def _assemble(given: Mapping[str, Mapping[str, Any]], path: str) -> Config:
    """The Config of the values ``given`` per table; every other key keeps its default."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTION_TYPES}
    top: dict[str, Any] = {}
    for name, values in given.items():
        if not values:
            continue
        if not name:
            top.update(values)
        elif name == "vm":  # [vm] name is Config's vm_name
            top["vm_name"] = values["name"]
        elif "." in name:  # [policy.actions]: a mapping field of its section, over its defaults
            section, _, field = name.partition(".")
            default = getattr(getattr(DEFAULTS, section), field)
            sections[section][field] = MappingProxyType({**default, **values})
        else:
            sections[name].update(values)
    built = {
        name: SECTION_TYPES[name](**values) if values else getattr(DEFAULTS, name)
        for name, values in sections.items()
    }
    return Config(source=path, **top, **built)


def _across(config: Config, path: str, problems: list[ConfigError]) -> None:
    """The checks that span keys, each skipped when a key it reads was refused already."""
    refused = {p.key for p in problems}

    def problem(key: str, reason: str, *reads: str) -> None:
        if not refused.intersection((key, *reads)):
            problems.append(ConfigError(path, key, reason))

    if config.imds.deadline < config.imds.connect_timeout:
        problem("imds.deadline", "must be at least imds.connect_timeout", "imds.connect_timeout")
