"""``drainer config show``: a Config laid out as the file's tables, from the table of keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drainer.config.schema import TABLES, Key
from drainer.config.sections import Config


def _holder(config: Config, table: str) -> Any:
    """What holds table ``table``'s values: a section, a mapping ([policy.actions]) or Config itself."""
    holder: Any = config
    for part in table.split(".") if table and table != "vm" else ():  # [vm] name is Config's vm_name
        holder = getattr(holder, part)
    return holder


def value_in(config: Config, key: Key) -> Any:
    """The value ``config`` holds for ``key``."""
    holder = _holder(config, key.table)
    if key.table == "vm":
        return holder.vm_name
    return holder[key.name] if isinstance(holder, Mapping) else getattr(holder, key.name)


def as_tables(config: Config) -> dict[str, Any]:
    """Every key's value, nested as in the file (``{"imds": {"deadline": 30.0, ...}, ...}``), in the
    table's order: lists as lists, free-form tables ([hooks.timeouts]) as they were given."""
    shown: dict[str, Any] = {}
    for table in TABLES:
        node = shown
        for part in table.name.split(".") if table.name else ():
            node = node.setdefault(part, {})
        for key in table.keys:
            value = value_in(config, key)
            if key.shown is not None:
                value = key.shown(value)
            node[key.name] = list(value) if isinstance(value, tuple) else value
        if table.any_key is not None:
            node.update(_holder(config, table.name))
    return shown
