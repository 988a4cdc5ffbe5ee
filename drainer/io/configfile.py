"""Reading the configuration file: checked like sshd's StrictModes checks its files, read from the
descriptor that was checked, then parsed and validated by ``drainer.config.from_mapping``; the
``DRAINER_*`` environment overrides applied last."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drainer.base.errors import ConfigError
from drainer.config import DEFAULT_CONFIG_PATH, Config, InvalidValueError, arm_url, endpoint_url, from_mapping
from drainer.io.trust import TrustError, read_file


def _read_toml(path: Path, data: bytes) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: PLC0415  (only when a file exists: keeps the idle run light)
    else:  # pragma: no cover
        import tomli as tomllib  # noqa: PLC0415
    try:
        return tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8: {exc.reason} at byte {exc.start}") from exc


def load(explicit_path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration: ``explicit_path``, else ``$DRAINER_CONFIG``, else the default file.

    A missing default file means built-in defaults; a missing named file is an error.
    Raises ConfigError.
    """
    env = os.environ if environ is None else environ
    named = explicit_path or env.get("DRAINER_CONFIG") or None
    path = Path(named or DEFAULT_CONFIG_PATH)
    if named is None and not path.exists():
        config = from_mapping({}, "<defaults>")
    else:
        if not path.is_file():
            raise ConfigError(
                str(path),
                "",
                "no such file (start from config.example.toml, or name another with --config PATH)"
                if not path.exists()
                else "not a regular file",
            )
        try:  # checked from / like sshd's StrictModes, and read from the descriptor that was checked
            data = read_file(str(path))
        except TrustError as exc:
            raise ConfigError(str(path), "", f"refused: {exc}") from exc
        except PermissionError as exc:
            raise ConfigError(
                str(path), "", f"cannot read: {exc.strerror} (run drainer as root, or let this user read it)"
            ) from exc
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
        config = from_mapping(_read_toml(path, data), str(path))
    endpoint = env.get("DRAINER_IMDS_ENDPOINT")
    if endpoint:
        url = _checked("DRAINER_IMDS_ENDPOINT", endpoint_url, endpoint)
        config = config._replace(imds=config.imds._replace(endpoint=url))
    arm = env.get("DRAINER_ARM_ENDPOINT")
    if arm:
        url = _checked("DRAINER_ARM_ENDPOINT", arm_url, arm)
        config = config._replace(azure=config.azure._replace(arm_endpoint=url))
    state_dir = env.get("DRAINER_STATE_DIR")
    if state_dir:
        config = config._replace(state_dir=state_dir)
    return config


def _checked(variable: str, check: Callable[[str], str], value: str) -> str:
    """An environment override checked like the key it replaces. Raises ConfigError."""
    try:
        return check(value)
    except InvalidValueError as exc:
        raise ConfigError(f"${variable}", "", str(exc)) from exc
