"""docs/configuration.md, generated from the table of keys (``drainer.config.schema``):

    python -m drainer.config.docs > docs/configuration.md

``tests/test_config_schema.py`` fails when the file is not what this prints.
"""

from __future__ import annotations

import json
from typing import Any

from drainer.config.schema import TABLES, Key, Table

REGENERATE = "python -m drainer.config.docs > docs/configuration.md"
_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "list",
    object: "string or list",
}

_HEADER = f"""\
# Configuration reference

<!-- Generated from drainer/config/schema.py: do not edit. Regenerate with
     {REGENERATE} -->

Every key of drainer's configuration file (`/etc/drainer/config.toml`, or `--config PATH`, or
`$DRAINER_CONFIG`), with its type, default, allowed values and meaning. A missing key takes its default;
an unknown key, a wrong type or a value outside what is allowed is an error that names the file, the key
and the reason (`drainer config check` lists every one, with the name probably meant).
[`config.example.toml`](../config.example.toml) sets every key to its default, with longer explanations;
`drainer config show` prints the configuration in effect. Environment overrides: `DRAINER_IMDS_ENDPOINT`,
`DRAINER_ARM_ENDPOINT`, `DRAINER_STATE_DIR`.
"""


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string, for the text we write
    return repr(value)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def _allowed(key: Key) -> str:
    if key.choices:
        return ", ".join(f"`{toml_value(c)}`" for c in key.choices)
    if key.low is not None and key.high is not None:
        return f"{_number(key.low)} to {_number(key.high)}"
    return key.check.allowed if key.check is not None else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(key: Key, name: str, default: str) -> str:
    cells = (f"`{name}`", _TYPES[key.kind], default, _allowed(key), key.meaning)
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(table: Table) -> list[str]:
    title = f"[{table.name}]" if table.name else "Top level (before any table)"
    lines = [f"## {title}", "", table.meaning[:1].upper() + table.meaning[1:] + ".", ""]
    lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    lines += [_row(key, key.name, f"`{toml_value(key.default)}`") for key in table.keys]
    if table.any_key is not None:
        any_name = f'"{table.any_key.name}"'
        lines.append(_row(table.any_key, any_name, "none: [hooks] timeout"))
        lines += ["", 'For example `"post-drain/50-wait-connections" = 360`.']
    return [*lines, ""]


def markdown() -> str:
    """The whole of docs/configuration.md."""
    lines = [_HEADER]
    for table in TABLES:
        lines += _table(table)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":  # pragma: no cover - run by hand, checked by the tests
    print(markdown(), end="")
