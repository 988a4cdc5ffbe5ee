"""The Scheduled Events document: a frozen model and a lenient, total parser.

Lenient where the platform varies (both ``NotBefore`` formats, the incarnation as a number or a numeric
string, fields missing in older api-versions, unknown event types or statuses), strict where the
document is simply broken (not JSON, wrong types): that raises ``MalformedDocumentError`` and the run
changes nothing.
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, NamedTuple, TypeVar

from drainer.base.errors import MalformedDocumentError


class EventType(str, enum.Enum):
    FREEZE = "Freeze"
    REBOOT = "Reboot"
    REDEPLOY = "Redeploy"
    PREEMPT = "Preempt"
    TERMINATE = "Terminate"
    # A type this version does not know (or an invalid one): it still holds the VM while listed.
    UNKNOWN = "Unknown"


class EventStatus(str, enum.Enum):
    SCHEDULED = "Scheduled"
    STARTED = "Started"
    # A status this version does not know: only the event's disappearance ends it.
    UNKNOWN = "Unknown"


# Bounds on what one event may carry; anything longer is cut (text) or refused (counts, numbers).
MAX_ID = 512
MAX_TEXT = 2048
MAX_RESOURCES = 1000
MAX_RESOURCE_NAME = 256
MAX_DURATION = 10 * 365 * 86400
MAX_INT_DIGITS = 20


class ScheduledEvent(NamedTuple):
    event_id: str
    event_type: EventType
    status: EventStatus
    resources: tuple[str, ...]
    not_before: datetime | None  # None: empty (Started) or unparseable
    resource_type: str = "VirtualMachine"
    description: str = ""
    source: str = ""
    duration_seconds: int | None = None  # None: absent or -1 (unknown)

    @property
    def key(self) -> str:
        """Identity of the event: EventIds are GUIDs whose letter case varies between sources."""
        return self.event_id.casefold()

    def concerns(self, vm_name: str) -> bool:
        """Whether ``vm_name`` is among the affected resources (no documented case rule: ignore it)."""
        wanted = vm_name.casefold()
        return any(r.casefold() == wanted for r in self.resources)

    def to_json(self) -> dict[str, Any]:
        return {
            "EventId": self.event_id,
            "EventType": self.event_type.value,
            "EventStatus": self.status.value,
            "ResourceType": self.resource_type,
            "Resources": list(self.resources),
            "NotBefore": format_iso(self.not_before),
            "Description": self.description,
            "EventSource": self.source,
            "DurationInSeconds": -1 if self.duration_seconds is None else self.duration_seconds,
        }


class ParseWarning(NamedTuple):
    """Something the parser could not take at face value; logged. ``ignored``: the event was dropped."""

    event_id: str
    reason: str
    ignored: bool = True


class EventsDocument(NamedTuple):
    incarnation: int | None  # None: absent or not a usable integer
    events: tuple[ScheduledEvent, ...]
    warnings: tuple[ParseWarning, ...] = ()

    def keys_of(self) -> tuple[str, ...]:
        """The events' keys, in document order."""
        return tuple(e.key for e in self.events)


def format_iso(value: datetime | None) -> str:
    """ISO 8601 in UTC with a ``Z``, or the empty string for None."""
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_not_before(value: str) -> datetime | None:
    """Parse ``NotBefore``: RFC 1123 (IMDS), ISO 8601 (older docs, mock servers) or empty.

    The weekday of RFC 1123 dates is not validated (Microsoft's own examples get it wrong).
    Returns None for the empty string. Raises ValueError for anything else unparseable.
    """
    text = value.strip()
    if not text:
        return None
    if text[:4].isdigit():
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        parsed = datetime.fromisoformat(iso)
    else:
        from email.utils import parsedate_to_datetime  # noqa: PLC0415 - not on the idle path

        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"unparseable date {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_document(body: bytes | str, *, source: str = "IMDS") -> EventsDocument:
    """Parse a Scheduled Events document.

    Each event is parsed on its own: an invalid value in one event is a warning and never blocks
    another event (an invalid event that lists this VM is kept, with an unknown type or status, so
    it holds the VM). Raises MalformedDocumentError when the body as a whole is not a Scheduled
    Events document (not JSON, nested beyond reason, not an object, Events not a list).
    """
    try:
        raw = json.loads(body, parse_int=_bounded_int)
    except RecursionError as exc:
        raise MalformedDocumentError("not JSON (nested too deeply)", url=source) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedDocumentError(f"not JSON ({_clean(str(exc))[:200]})", url=source) from exc
    return document_from_json(raw, source=source)


_E = TypeVar("_E", EventType, EventStatus)


class _Huge(str):
    """An integer with more than MAX_INT_DIGITS digits: kept as text, never converted."""


def _bounded_int(text: str) -> int | _Huge:
    # Python refuses to convert integers of more than 4,300 digits (a ValueError from deep inside
    # json.loads): keep absurd ones as text and let the field's parser refuse that one value.
    return _Huge(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _clean(text: str) -> str:
    """The text with lone surrogates (valid JSON, invalid UTF-8) and NUL (valid JSON, refused in a
    process's environment and argv) replaced, so it can be stored and handed to hooks."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


def _fail(source: str, reason: str) -> MalformedDocumentError:
    return MalformedDocumentError(f"malformed Scheduled Events document: {reason}", url=source)


class _InvalidFieldError(ValueError):
    """One field of one event is invalid."""


def _parse_incarnation(value: object) -> int | None:
    if isinstance(value, (bool, _Huge)):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) <= MAX_INT_DIGITS:
        return int(value.strip())
    return None


def _text(raw: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or isinstance(value, _Huge):
        raise _InvalidFieldError(f"{key} is not a string")
    return _clean(value)[:limit]


def _parse_duration(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, _Huge)) or not isinstance(value, (int, str)):
        raise _InvalidFieldError("DurationInSeconds is not an integer")
    try:
        seconds = int(value) if len(str(value)) <= MAX_INT_DIGITS else None
    except ValueError as exc:
        raise _InvalidFieldError("DurationInSeconds is not an integer") from exc
    if seconds is None or seconds > MAX_DURATION:
        raise _InvalidFieldError("DurationInSeconds is out of range")
    return None if seconds < 0 else seconds


def _resources(item: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The names in Resources (strings only, bounded) and a note when some were not usable."""
    raw = item.get("Resources", [])
    if raw is None:
        return (), ""
    if not isinstance(raw, list):
        return (), "Resources is not a list"
    names = tuple(
        _clean(r) for r in raw[:MAX_RESOURCES] if isinstance(r, str) and 0 < len(r) <= MAX_RESOURCE_NAME
    )
    return names, ("" if len(names) == len(raw) else "some Resources entries are not VM names")


def _event_id(item: dict[str, Any]) -> str:
    value = item.get("EventId")
    if isinstance(value, str) and not isinstance(value, _Huge) and 0 < len(value) <= MAX_ID:
        return _clean(value)
    # No usable id: a stable one from the content, so the event is still tracked while listed.
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode("utf-8", "replace"))
    return "unidentified-" + digest.hexdigest()[:16]


def _one_event(item: dict[str, Any], warnings: list[ParseWarning]) -> ScheduledEvent:
    """One event, however invalid its fields (each invalid field is a warning)."""
    event_id = _event_id(item)
    if event_id.startswith("unidentified-"):
        warnings.append(ParseWarning(event_id, "event without a usable EventId", ignored=False))
    resources, note = _resources(item)
    if note:
        warnings.append(ParseWarning(event_id, note, ignored=False))

    def field(parse: Any, default: Any) -> Any:
        try:
            return parse()
        except _InvalidFieldError as exc:
            warnings.append(ParseWarning(event_id, str(exc), ignored=False))
            return default

    def known(key: str, kind: type[_E]) -> _E:
        """The field's enum member; UNKNOWN (which holds the VM) for anything else."""
        text = field(lambda: _text(item, key, 64), "")
        try:
            return kind(text)
        except ValueError:
            warnings.append(ParseWarning(event_id, f"unknown {key} {text!r}: holds the VM", ignored=False))
            return kind("Unknown")

    event_type = known("EventType", EventType)
    status = known("EventStatus", EventStatus)
    not_before_text = field(lambda: _text(item, "NotBefore", 64), "")
    try:
        not_before = parse_not_before(not_before_text)
    except (ValueError, OverflowError):
        # Unknown NotBefore means "could be any moment": the safe reading is "now".
        note = f"unparseable NotBefore {not_before_text!r}, treated as imminent"
        warnings.append(ParseWarning(event_id, note, ignored=False))
        not_before = None
    return ScheduledEvent(
        event_id=event_id,
        event_type=event_type,
        status=status,
        resources=resources,
        not_before=not_before,
        resource_type=field(lambda: _text(item, "ResourceType", 64), "") or "VirtualMachine",
        description=field(lambda: _text(item, "Description"), ""),
        source=field(lambda: _text(item, "EventSource", 64), ""),
        duration_seconds=field(lambda: _parse_duration(item.get("DurationInSeconds")), None),
    )


def document_from_json(raw: object, *, source: str = "IMDS") -> EventsDocument:
    """Build an EventsDocument from decoded JSON. Raises MalformedDocumentError when the document as
    a whole has the wrong shape; a bad event is a warning (and kept where it can be)."""
    if not isinstance(raw, dict):
        raise _fail(source, "top level is not an object")
    warnings: list[ParseWarning] = []
    incarnation = _parse_incarnation(raw.get("DocumentIncarnation", 0))
    if incarnation is None:
        warnings.append(ParseWarning("", "DocumentIncarnation is not a usable integer", ignored=False))
    events_raw = raw.get("Events", [])
    if events_raw is None:
        events_raw = []
    if not isinstance(events_raw, list):
        raise _fail(source, "Events is not a list")
    events: list[ScheduledEvent] = []
    for item in events_raw:
        if not isinstance(item, dict):
            warnings.append(ParseWarning("", "an event is not an object"))
            continue
        events.append(_one_event(item, warnings))
    return EventsDocument(incarnation=incarnation, events=tuple(events), warnings=tuple(warnings))
