"""The checks of single values that a type and a range cannot express (URLs, addresses, resource ids,
lists), each a ``Check``: what the table (``drainer.config.schema``) calls to validate and normalize a
value, with the one-line description of what it allows that the generated documentation shows.

A check raises ``InvalidValueError`` with the reason (the parser adds the file and the key). The
defaults never go through them: they are ours, and ``tests/test_config_schema.py`` checks each passes
its own check.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from drainer.base.events import EventType

HOOK_PHASES = ("on-event", "pre-drain", "post-drain", "pre-restore", "post-restore")


class InvalidValueError(Exception):
    """A value the configuration refuses; ``str()`` is the reason, without the file and the key."""


class Check:
    """Validates a value (already of the key's type) and returns what to keep. Raises InvalidValueError."""

    __slots__ = ("allowed", "run")

    def __init__(self, run: Callable[[Any], Any], allowed: str) -> None:
        self.run = run
        self.allowed = allowed  # for docs/configuration.md


def endpoint_url(url: str) -> str:
    """An http(s) endpoint, without its trailing slash. Raises InvalidValueError."""
    from drainer.base.urls import endpoint_problem  # noqa: PLC0415 - only for a configured endpoint

    problem = endpoint_problem(url)
    if problem:
        raise InvalidValueError(f"{problem}, not {url!r}")
    return url.rstrip("/")


def arm_url(url: str) -> str:
    """ARM carries bearer tokens: https only, except for an emulator on a loopback address.
    Raises InvalidValueError."""
    from urllib.parse import urlsplit  # noqa: PLC0415 - only for a configured endpoint

    url = endpoint_url(url)
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        raise InvalidValueError("must use https (plain http is allowed only on a loopback address)")
    return url


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    import ipaddress  # noqa: PLC0415 - only for a plain-http endpoint, never on the default path

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as (host, port); the value was checked by ``_address``."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _address(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValueError(f"must be host:port, not {value!r}")
    return value


def _floors(value: Any) -> Mapping[str, int]:
    """``[drain] min_in_service``: a number (every pool) or a table (pool -> floor)."""
    from types import MappingProxyType  # noqa: PLC0415

    def floor(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1000

    if floor(value):
        return MappingProxyType({"*": value})
    if isinstance(value, Mapping) and value and all(k and floor(v) for k, v in value.items()):
        return MappingProxyType(dict(value))
    raise InvalidValueError(
        'must be between 0 and 1000, or a table of such floors by pool (its id, "<load balancer>/<pool>", '
        'its name, or "*" for the others)'
    )


def _optional_endpoint(url: str) -> str:
    return endpoint_url(url) if url else url


def _not_empty(value: str) -> str:
    if not value:
        raise InvalidValueError("must not be empty")
    return value


def _url_path(value: str) -> str:
    if not value.startswith("/"):
        raise InvalidValueError("must start with /")
    return value


def _windows_only(value: bool) -> bool:
    if value and sys.platform != "win32":
        raise InvalidValueError("the Windows Event Log exists only on Windows")
    return value


def _nics(value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(n, str) and n for n in value):
        raise InvalidValueError("must be a list of NIC names or resource ids")
    return tuple(value)


_EVENT_TYPES = tuple(t.value for t in EventType)


def _event_types(value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(t, str) and t in _EVENT_TYPES for t in value):
        raise InvalidValueError(f"must be a list of event types ({', '.join(sorted(_EVENT_TYPES))})")
    return tuple(value)


def _ports(value: list[Any]) -> tuple[int, ...]:
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value):
        raise InvalidValueError("must be a list of TCP ports (1-65535)")
    return tuple(value)


def _argv(value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(c, str) and c for c in value):
        raise InvalidValueError("must be an argv list of strings (no shell)")
    return tuple(value)


def hook_timeout_key(key: str) -> str:
    """A key of [hooks.timeouts]: ``phase/hook name``. Raises InvalidValueError."""
    phase, _, name = key.partition("/")
    if phase not in HOOK_PHASES or not name or "/" in name:
        raise InvalidValueError(f'must be "<phase>/<hook name>" with a phase of {", ".join(HOOK_PHASES)}')
    return key


ENDPOINT = Check(endpoint_url, "an http(s) URL")
OPTIONAL_ENDPOINT = Check(_optional_endpoint, 'an http(s) URL, or "" for none')
ARM_ENDPOINT = Check(arm_url, "an https URL (http on a loopback address)")
ADDRESS = Check(_address, "host:port")


def floors_shown(floors: Mapping[str, int]) -> int | dict[str, int]:
    """``[drain] min_in_service`` as the file writes it: one number for every pool, else the table."""
    return floors["*"] if set(floors) == {"*"} else dict(floors)


FLOORS = Check(_floors, 'a floor 0 to 1000, or a table pool -> floor ("*": the others)')
NOT_EMPTY = Check(_not_empty, "not empty")
URL_PATH = Check(_url_path, "a path starting with /")
WINDOWS_ONLY = Check(_windows_only, "true only on Windows")
NICS = Check(_nics, "NIC names or resource ids")
EVENT_TYPES = Check(_event_types, ", ".join(_EVENT_TYPES))
PORTS = Check(_ports, "TCP ports, 1 to 65535")


def _service_ports(value: Any) -> tuple[int, ...] | str:
    if value == "auto":
        return "auto"
    if not isinstance(value, list):
        raise InvalidValueError('must be "auto" or a list of TCP ports (1-65535)')
    return _ports(value)


SERVICE_PORTS = Check(_service_ports, '"auto", or TCP ports 1 to 65535')
ARGV = Check(_argv, "non-empty strings: program and arguments, no shell")
HOOK_NAME = Check(hook_timeout_key, "<phase>/<hook name>")
