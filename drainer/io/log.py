"""Logging: structlog to stderr (JSON lines off a terminal, readable on one), optionally also to
syslog (ident ``drainer``) or the Windows Event Log. Secrets never reach a sink.

structlog (and the asyncio it pulls in) costs about a quarter of an idle run's start-up, and an idle
run logs nothing at the default level: ``get_logger`` returns a proxy that filters by level first
and builds the structlog pipeline only for the first record that will be written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

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
# Warnings about a standing condition (a file skipped in a hooks directory, an event IMDS keeps
# serving with an unknown type): the daemon would repeat them on every drain or every poll. Each is
# written once per process for the same fields; repeats go to debug.
ONCE_PER_CONDITION = frozenset(
    {
        "hook skipped",
        "scheduled event not taken at face value",
        "a drainer record on the NIC cannot be verified: never acted on",
        "the NIC's record and the local copy disagree; restoring both",
    }
)


# The exact secrets this process holds (the ARM tokens, registered as they are obtained:
# drainer.io.arm), masked wherever text leaves the process, whatever their shape.
_HELD: set[str] = set()
_SHORTEST = 8  # a value this short would mask ordinary words


def register_secret(value: str) -> None:
    """Mask ``value`` from now on in every log sink, error line, file and state column."""
    if len(value) >= _SHORTEST:
        _HELD.add(value)


def redact_text(text: str) -> str:
    """``text`` with the secrets this process holds, and anything shaped like a secret, masked."""
    for value in tuple(_HELD):
        if value in text:
            text = text.replace(value, REDACTED)
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


class LazyLogger:
    """Level filter in front of a structlog logger that is built on first use."""

    def __init__(self, cfg: LoggingConfig, stream: TextIO | None, level: str) -> None:
        self._cfg = cfg
        self._stream = stream
        self._min = _LEVELS[level]
        self._real: Any = None
        self._warned: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if level == "warning" and event in ONCE_PER_CONDITION:
            condition = (event, tuple(sorted((k, repr(v)) for k, v in fields.items())))
            if condition in self._warned:
                level = "debug"  # said once already; still there with -v
            self._warned.add(condition)
        if _LEVELS[level] < self._min:
            return
        if self._real is None:
            self._real = _build(self._cfg, self._stream, self._min)
        getattr(self._real, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


_current: LazyLogger | None = None


def configure(cfg: LoggingConfig, *, stream: TextIO | None = None, level: str | None = None) -> None:
    """Set up logging for this process (cheap: structlog is imported on the first record)."""
    global _current  # noqa: PLW0603 - one logging set-up per process, as structlog itself has
    _current = LazyLogger(cfg, stream, level or cfg.level)


def _printable_values(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Values from IMDS or ARM never reach a terminal raw (escape sequences written as escapes)."""
    from drainer.base.terminal import printable  # noqa: PLC0415

    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


def _build(cfg: LoggingConfig, stream: TextIO | None, min_level: int) -> Any:
    import structlog  # noqa: PLC0415 - see the module docstring

    out = sys.stderr if stream is None else stream
    use_console = cfg.format == "console" or (cfg.format == "auto" and out.isatty())
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    sink = _Sink(out, _extra_handlers(cfg))
    # JSON escapes control characters itself; the console renderer would print them raw.
    escape: list[Any] = [_printable_values] if use_console else []
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("drainer")


def get_logger() -> LazyLogger:
    """The process logger; ``configure`` first (else: defaults, to stderr)."""
    if _current is None:
        configure(LoggingConfig())
    if _current is None:  # pragma: no cover - configure always sets it
        raise RuntimeError("logging is not configured")
    return _current
