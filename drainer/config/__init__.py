"""Configuration: a frozen, typed object loaded from TOML and validated up front.

Unknown keys, wrong types and out-of-range values are refused with the file, the key and the reason;
every problem of a file at once (``drainer config check`` prints them all). Environment overrides (for
tests and containers): ``DRAINER_CONFIG`` (the file), ``DRAINER_IMDS_ENDPOINT``,
``DRAINER_ARM_ENDPOINT`` and ``DRAINER_STATE_DIR``.

    sections.py  the typed sections the rest of drainer reads, and every key's default
    schema.py    the table: every key's type, default, allowed values and meaning
    values.py    the checks of single values (URLs, addresses, lists)
    parse.py     from_mapping: the table applied to a file, every problem collected
    check.py     ``config check``'s findings: what loads fine but does not do what was meant
    docs.py      docs/configuration.md, generated from the table

This package is pure: it imports only ``drainer.base`` and the standard library.
"""

from __future__ import annotations

from drainer.config.parse import from_mapping, parse
from drainer.config.schema import (
    ACTIONS,
    DRAIN_METHODS,
    IDENTITIES,
    LOG_FORMATS,
    LOG_LEVELS,
    RESTORE_WHEN,
    SECTIONS,
    TABLES,
    Key,
    Table,
)
from drainer.config.sections import (
    DEFAULT_ARM_ENDPOINT,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DISABLED_FILE,
    DEFAULT_HOOKS_DIR,
    DEFAULT_IMDS_ENDPOINT,
    DEFAULT_STATE_DIR,
    ApprovalConfig,
    AzureConfig,
    Config,
    DaemonConfig,
    DrainConfig,
    FleetConfig,
    HooksConfig,
    ImdsConfig,
    LoggingConfig,
    MetricsConfig,
    PolicyConfig,
    ProbeConfig,
    RestoreConfig,
    RetentionConfig,
)
from drainer.config.values import (
    HOOK_PHASES,
    InvalidValueError,
    arm_url,
    endpoint_url,
    is_loopback,
    parse_address,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_ARM_ENDPOINT",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DISABLED_FILE",
    "DEFAULT_HOOKS_DIR",
    "DEFAULT_IMDS_ENDPOINT",
    "DEFAULT_STATE_DIR",
    "DRAIN_METHODS",
    "HOOK_PHASES",
    "IDENTITIES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "RESTORE_WHEN",
    "SECTIONS",
    "TABLES",
    "ApprovalConfig",
    "AzureConfig",
    "Config",
    "DaemonConfig",
    "DrainConfig",
    "FleetConfig",
    "HooksConfig",
    "ImdsConfig",
    "InvalidValueError",
    "Key",
    "LoggingConfig",
    "MetricsConfig",
    "PolicyConfig",
    "ProbeConfig",
    "RestoreConfig",
    "RetentionConfig",
    "Table",
    "arm_url",
    "endpoint_url",
    "from_mapping",
    "is_loopback",
    "parse",
    "parse_address",
]
