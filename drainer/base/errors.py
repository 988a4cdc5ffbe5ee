"""The error types drainer raises. Every expected failure is a ``DrainerError``.

The CLI prints ``str(error)`` for these and exits with ``error.exit_code``; anything else is a bug and
gets a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_ACTION_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3


class DrainerError(Exception):
    """Base of every expected failure."""

    exit_code = EXIT_ACTION_FAILED


class ConfigError(DrainerError):
    """The configuration is invalid: names the file, the key and the reason.

    ``problems`` holds every problem found in the file, this one first (``drainer config check`` prints
    them all; the message of a load names the first and counts the others).
    """

    exit_code = EXIT_USAGE

    def __init__(self, path: str, key: str, reason: str, *, problems: Sequence[ConfigError] = ()) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        self.problems: tuple[ConfigError, ...] = tuple(problems) or (self,)
        where = f"{path}: {key}" if key else path
        more = len(self.problems) - 1
        also = f" (and {more} more: `drainer config check` lists them all)" if more else ""
        super().__init__(f"{where}: {reason}{also}")

    @classmethod
    def of(cls, problems: Sequence[ConfigError]) -> ConfigError:
        """One error carrying every problem of ``problems`` (at least one), named after the first."""
        first = problems[0]
        return cls(first.path, first.key, first.reason, problems=problems)


class ImdsError(DrainerError):
    """IMDS could not be used for this run."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        suffix = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{message}: {url}{suffix}")


class ImdsUnavailableError(ImdsError):
    """IMDS did not answer usefully before the deadline (connection errors, timeouts, retryable codes)."""


class ImdsHttpError(ImdsError):
    """IMDS answered with a status that retrying will not fix (400, 403, 405...)."""

    def __init__(self, message: str, *, url: str, status: int, body: str) -> None:
        self.body = body
        super().__init__(f"{message}: {body}" if body else message, url=url, status=status)


class MalformedDocumentError(ImdsError):
    """IMDS answered 200 with a body that is not a valid document; the run changes nothing."""


class StateError(DrainerError):
    """The state database cannot be opened or is not ours."""


class LockedError(DrainerError):
    """Another drainer run holds the lock."""

    exit_code = EXIT_LOCKED


class ActionError(DrainerError):
    """An action (drain, restore) failed; it is retried on the next run."""

    def __init__(self, action: str, reason: str) -> None:
        self.action = action
        self.reason = reason
        super().__init__(f"{action} failed: {reason}")


class DrainHeldError(ActionError):
    """A safety rule (``min_in_service``) holds the drain back; it is retried on the next run."""
