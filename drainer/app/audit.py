"""``drainer config check``: every path drainer would trust, checked as it will be when used
(``drainer.io.trust``), each refusal with the exact path and the reason."""

from __future__ import annotations

from pathlib import Path

from drainer.act.health import configuration_error
from drainer.config import Config
from drainer.io.trust import TrustError, check, check_dir


def refusals(config: Config) -> list[str]:
    """One line per refused path: what it is for, the component that fails, and why."""
    from drainer.act.hooks import problems  # noqa: PLC0415

    found: list[str] = []
    if Path(config.hooks.dir).exists():
        try:
            check(config.hooks.dir, strict_leaf=True)
        except TrustError as exc:
            found.append(f"hooks dir {config.hooks.dir}: {exc}")
    found += [f"hook {problem}" for problem in problems(config)]
    gate = configuration_error(config)  # the restore gate's own check, in the environment it runs in
    if gate:
        found.append(gate)
    reason = check_dir(config.state_dir)
    if reason:
        found.append(f"state_dir {config.state_dir}: {reason}")
    if config.drain.method == "probe":
        flag_dir = str(Path(config.probe.flag_file).parent)
        reason = check_dir(flag_dir)
        if reason:
            found.append(f"probe.flag_file directory {flag_dir}: {reason}")
    if config.drain.method in ("nic", "admin-state"):
        found += _record_key(config)
    return found


def _record_key(config: Config) -> list[str]:
    """The record key and the drain counter, read as a drain reads them (nothing is created)."""
    from drainer.io.recordkey import FileKeyStore, RecordKeyError, key_path  # noqa: PLC0415

    keys = FileKeyStore(key_path(config.state_dir, config.drain.record_key))
    reason = check_dir(keys.dir)
    if reason:
        return [f"drain.record_key directory {keys.dir}: {reason}"]
    try:
        keys.key(create=False)
        keys.counter()
    except RecordKeyError as exc:
        return [f"drain.record_key {keys.path}: {exc}"]
    return []
