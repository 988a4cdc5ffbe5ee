"""The restore gate's local health check: an HTTP URL answering 2xx, or a command exiting 0."""

from __future__ import annotations

import os

from drainer.base.typing import Logger
from drainer.config import Config


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
        from drainer.act.hooks import environment  # noqa: PLC0415
        from drainer.io import process  # noqa: PLC0415
        from drainer.io.trust import TrustError, find_program, open_file  # noqa: PLC0415

        env = environment(os.environ, {"DRAINER_PHASE": "restore-gate"})
        try:
            fd, _ = open_file(find_program(cfg.health_command[0], env["PATH"]))
        except TrustError as exc:
            log.error("restore health command refused", command=list(cfg.health_command), reason=str(exc))
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
