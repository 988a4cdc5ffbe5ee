"""The restore gate's local health check: an HTTP URL answering 2xx, or a command exiting 0.

A command drainer refuses to run (its program missing, not an executable file, or failing the path
trust check of ``drainer.io.trust``) is a configuration error, not an unhealthy VM: ``refusal`` names
it, for ``drainer config check``, ``drainer status`` and the gate itself, which logs it as such.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from drainer.base.typing import Logger
from drainer.config import Config
from drainer.decide.model import State
from drainer.io.trust import TrustError, find_program, open_file

KEY = "restore.health_command"


def _environment(inherited: Mapping[str, str]) -> dict[str, str]:
    from drainer.act.hooks import environment  # noqa: PLC0415 - only with a health command

    return environment(inherited, {"DRAINER_PHASE": "restore-gate"})


def _open_program(name: str, search_path: str) -> int:
    """A descriptor of the checked program file ``name`` runs. Raises TrustError saying why not."""
    fd, checked = open_file(find_program(name, search_path))  # a trusted regular file
    mode = checked.info.st_mode
    if not mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        os.close(fd)
        raise TrustError(checked.real, f"not executable (mode {stat.S_IMODE(mode):04o})")
    return fd


def refusal(config: Config, inherited: Mapping[str, str] | None = None) -> str | None:
    """Why the restore gate would refuse ``[restore] health_command`` (the check it makes before
    running it, in the environment it runs it with), or None (none configured, or accepted)."""
    command = config.restore.health_command
    if not command:
        return None
    env = _environment(os.environ if inherited is None else inherited)
    try:
        fd = _open_program(command[0], env["PATH"])
    except TrustError as exc:
        return str(exc)
    os.close(fd)
    return None


def configuration_error(config: Config, inherited: Mapping[str, str] | None = None) -> str | None:
    """``refusal`` as one line for ``config check`` and ``status``, with what it means, or None."""
    reason = refusal(config, inherited)
    if reason is None:
        return None
    return (
        f"{KEY} {config.restore.health_command[0]}: {reason} (the restore gate cannot check health: "
        f"each restore waits [restore] health_timeout, {config.restore.health_timeout:g}s)"
    )


def healthy(config: Config, log: Logger) -> bool | None:
    """True or False when a check is configured (both must pass if both are), None when there is none."""
    cfg = config.restore
    if not cfg.health_url and not cfg.health_command:
        return None
    ok = True
    if cfg.health_url:
        import requests  # noqa: PLC0415

        session = requests.Session()
        session.trust_env = False  # a local check: no proxy
        try:
            answer = session.get(cfg.health_url, timeout=5, allow_redirects=False)
            url_ok = 200 <= answer.status_code < 300
            detail = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            url_ok, detail = False, type(exc).__name__
        finally:
            session.close()
        log.info("restore health check", url=cfg.health_url, ok=url_ok, detail=detail)
        ok = ok and url_ok
    if cfg.health_command:
        from drainer.io import process  # noqa: PLC0415

        env = _environment(os.environ)
        try:
            fd = _open_program(cfg.health_command[0], env["PATH"])
        except TrustError as exc:
            # A configuration error, said as one at once (``config check`` and ``status`` name it too),
            # and not a health verdict. The restore still waits, as for a check that does not pass:
            # nothing vouches for the VM (it may be back from a reboot with its service still
            # starting), and the operator asked for a check; but only until ``health_timeout``, as the
            # gate always does. Waiting for the configuration to be fixed would be safer for this VM
            # alone, but a configuration is usually rolled out to every VM of a pool: one typo would
            # leave each VM out of rotation after its maintenance, until the whole pool was out.
            # Fixed, the next run checks health and restores.
            log.error(
                "configuration error: the restore gate cannot run its health check; the restore waits "
                "as for a failing check (at most [restore] health_timeout)",
                key=KEY,
                command=list(cfg.health_command),
                reason=str(exc),
                health_timeout=cfg.health_timeout,
            )
            return False
        try:
            done = process.run(
                cfg.health_command,
                env=env,
                stdin=b"",
                timeout=30.0,
                kill_grace=2.0,
                output_limit=2048,
                executable_fd=fd,
            )
        finally:
            os.close(fd)
        command_ok = done.exit_code == 0
        log.info(
            "restore health check",
            command=list(cfg.health_command),
            ok=command_ok,
            exit_code=done.exit_code,
            stderr=done.stderr or None,
            start_error=done.start_error or None,
        )
        ok = ok and command_ok
    return ok


def recovery_gate(config: Config, log: Logger, state: State) -> bool | None:
    """The restore gate's answer for restore_when = "recovered": True without a gate; asked only while an
    event under that rule is Started and holds the VM (None: not asked)."""
    if not config.restore.health_url and not config.restore.health_command:
        return True
    if "recovered" not in config.policy.restore_when.values():
        return None
    from drainer.decide.recovery import needs_gate  # noqa: PLC0415

    if not needs_gate(state.events, config.policy):
        return None
    return healthy(config, log)
