"""Logging: structlog to stderr (JSON lines off a terminal, readable on one), optionally also to
syslog (ident ``drainer``) or the Windows Event Log. Secrets never reach a sink."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from drainer.config import LoggingConfig

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_SECRET_KEYS = re.compile(r"token|secret|password|authorization|credential|sig$|signature", re.I)
# Bearer tokens, JWTs, SAS signatures and client secrets in free text.
_SECRET_TEXT = re.compile(
    r"(?i:bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?"
    r"|(?i:(?:sig|client_secret|access_token)=)[^&\s\"']+"
)
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    return _SECRET_TEXT.sub(REDACTED, text)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and key != "event":
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


class _Sink:
    """The structlog logger: writes each rendered line to the stream and any extra handlers."""

    def __init__(self, stream: TextIO, handlers: list[logging.Handler]) -> None:
        self._stream = stream
        self._handlers = handlers

    def _write(self, level: int, message: str) -> None:
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr (daemon without a terminal) must not stop the agent
        for handler in self._handlers:
            if level >= handler.level:
                record = logging.LogRecord("drainer", level, "", 0, message, None, None)
                handler.handle(record)

    def debug(self, message: str) -> None:
        self._write(10, message)

    def info(self, message: str) -> None:
        self._write(20, message)

    msg = info

    def warning(self, message: str) -> None:
        self._write(30, message)

    def error(self, message: str) -> None:
        self._write(40, message)

    def critical(self, message: str) -> None:
        self._write(50, message)


def _extra_handlers(cfg: LoggingConfig) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    if cfg.syslog:
        from logging.handlers import SysLogHandler  # noqa: PLC0415

        address: str | tuple[str, int] = cfg.syslog_address
        if ":" in cfg.syslog_address and not cfg.syslog_address.startswith("/"):
            host, _, port = cfg.syslog_address.rpartition(":")
            address = (host, int(port))
        try:
            syslog = SysLogHandler(address=address, facility=SysLogHandler.LOG_DAEMON)
        except OSError as exc:
            print(f"drainer: syslog unavailable at {cfg.syslog_address}: {exc}", file=sys.stderr)
        else:
            syslog.ident = "drainer: "
            handlers.append(syslog)
    if cfg.eventlog and sys.platform == "win32":  # pragma: no cover - Windows only
        from logging.handlers import NTEventLogHandler  # noqa: PLC0415

        handlers.append(NTEventLogHandler("drainer"))
    return handlers


def configure(cfg: LoggingConfig, *, stream: TextIO | None = None, level: str | None = None) -> None:
    """Set up structlog for this process."""
    out = sys.stderr if stream is None else stream
    use_console = cfg.format == "console" or (cfg.format == "auto" and out.isatty())
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    sink = _Sink(out, _extra_handlers(cfg))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level or cfg.level]),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=False,
    )


def get_logger() -> Any:
    return structlog.get_logger("drainer")
