"""The Scheduled Events document: a frozen model and a lenient, total parser.

Lenient where the platform varies (both ``NotBefore`` formats, the incarnation as a number or a numeric
string, fields missing in older api-versions, unknown event types or statuses), strict where the
document is simply broken (not JSON, wrong types): that raises ``MalformedDocumentError`` and the run
changes nothing.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime, timezone
from typing import Any, NamedTuple

from drainer.errors import MalformedDocumentError


class EventType(str, enum.Enum):
    FREEZE = "Freeze"
    REBOOT = "Reboot"
    REDEPLOY = "Redeploy"
    PREEMPT = "Preempt"
    TERMINATE = "Terminate"


class EventStatus(str, enum.Enum):
    SCHEDULED = "Scheduled"
    STARTED = "Started"


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
    incarnation: int
    events: tuple[ScheduledEvent, ...]
    warnings: tuple[ParseWarning, ...] = ()


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

    Raises MalformedDocumentError when the body is not JSON or has the wrong shape; unknown event
    types and statuses, and events missing an id, are returned in ``warnings`` instead.
    """
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedDocumentError(f"not JSON ({exc})", url=source) from exc
    return document_from_json(raw, source=source)


def _fail(source: str, reason: str) -> MalformedDocumentError:
    return MalformedDocumentError(f"malformed Scheduled Events document: {reason}", url=source)


def _parse_incarnation(value: object, source: str) -> int:
    if isinstance(value, bool):
        raise _fail(source, "DocumentIncarnation is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise _fail(source, f"DocumentIncarnation is not an integer: {value!r}"[:200])


def _optional_str(raw: dict[str, Any], key: str, source: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(source, f"{key} is not a string")
    return value


def _parse_duration(value: object, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _fail(source, "DurationInSeconds is not an integer")
    try:
        seconds = int(value)
    except ValueError as exc:
        raise _fail(source, "DurationInSeconds is not an integer") from exc
    return None if seconds < 0 else seconds


def document_from_json(raw: object, *, source: str = "IMDS") -> EventsDocument:
    """Build an EventsDocument from decoded JSON. Raises MalformedDocumentError on wrong types."""
    if not isinstance(raw, dict):
        raise _fail(source, "top level is not an object")
    incarnation = _parse_incarnation(raw.get("DocumentIncarnation", 0), source)
    events_raw = raw.get("Events", [])
    if events_raw is None:
        events_raw = []
    if not isinstance(events_raw, list):
        raise _fail(source, "Events is not a list")
    events: list[ScheduledEvent] = []
    warnings: list[ParseWarning] = []
    for item in events_raw:
        if not isinstance(item, dict):
            raise _fail(source, "an event is not an object")
        event_id = _optional_str(item, "EventId", source)
        type_text = _optional_str(item, "EventType", source)
        status_text = _optional_str(item, "EventStatus", source)
        resources_raw = item.get("Resources", [])
        if resources_raw is None:
            resources_raw = []
        if not isinstance(resources_raw, list) or not all(isinstance(r, str) for r in resources_raw):
            raise _fail(source, "Resources is not a list of strings")
        not_before_text = _optional_str(item, "NotBefore", source)
        description = _optional_str(item, "Description", source)
        event_source = _optional_str(item, "EventSource", source)
        resource_type = _optional_str(item, "ResourceType", source) or "VirtualMachine"
        duration = _parse_duration(item.get("DurationInSeconds"), source)
        if not event_id:
            warnings.append(ParseWarning("", "event without EventId"))
            continue
        try:
            event_type = EventType(type_text)
        except ValueError:
            warnings.append(ParseWarning(event_id, f"unknown EventType {type_text!r}"))
            continue
        try:
            status = EventStatus(status_text)
        except ValueError:
            warnings.append(ParseWarning(event_id, f"unknown EventStatus {status_text!r}"))
            continue
        try:
            not_before = parse_not_before(not_before_text)
        except ValueError:
            # Unknown NotBefore means "could be any moment": the safe reading is "now".
            note = f"unparseable NotBefore {not_before_text!r}, treated as imminent"
            warnings.append(ParseWarning(event_id, note, ignored=False))
            not_before = None
        events.append(
            ScheduledEvent(
                event_id=event_id,
                event_type=event_type,
                status=status,
                resources=tuple(resources_raw),
                not_before=not_before,
                resource_type=resource_type,
                description=description,
                source=event_source,
                duration_seconds=duration,
            )
        )
    return EventsDocument(incarnation=incarnation, events=tuple(events), warnings=tuple(warnings))
