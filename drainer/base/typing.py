"""The Protocols drainer's modules meet at (like structlog's ``typing.py``): one place, so that a
boundary is never typed ``Any``."""

from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    """What drainer logs through: structlog's bound logger, ``drainer.io.log.LazyLogger``, the dry
    run's wrapper. One event name per line, structured fields beside it."""

    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...
