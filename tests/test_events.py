"""The Scheduled Events parser, against Microsoft's verbatim examples and the documented variations."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from drainer.base.errors import MalformedDocumentError
from drainer.base.events import EventStatus, EventType, parse_document, parse_not_before
from tests.conftest import EXAMPLES


def _example(n: int) -> bytes:
    return (EXAMPLES / f"se_msdocs_example_incarnation_{n}.json").read_bytes()


def test_verbatim_docs_sequence_parses_with_its_quirks() -> None:
    empty = parse_document(_example(1))
    assert empty.incarnation == 1
    assert empty.events == ()

    scheduled = parse_document(_example(2))
    assert scheduled.incarnation == 2
    (event,) = scheduled.events
    assert event.event_id == "C7061BAC-AFDC-4513-B24B-AA5F13A16123"
    assert event.event_type is EventType.FREEZE
    assert event.status is EventStatus.SCHEDULED
    assert event.resources == ("WestNO_0", "WestNO_1")
    # "Mon, 11 Apr 2026" is really a Saturday: the weekday must not be validated.
    assert event.not_before == datetime(2026, 4, 11, 22, 26, 58, tzinfo=timezone.utc)
    assert event.duration_seconds == 5
    assert event.source == "Platform"

    started = parse_document(_example(3))
    (event3,) = started.events
    assert event3.key == event.key
    assert event3.status is EventStatus.STARTED
    assert event3.not_before is None  # "NotBefore":  "" once Started

    assert parse_document(_example(4)).events == ()


def test_the_concatenated_code_block_is_not_one_document() -> None:
    block = (EXAMPLES / "se_msdocs_example_responses_codeblock_full.txt").read_bytes()
    with pytest.raises(MalformedDocumentError):
        parse_document(block)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mon, 19 Sep 2016 18:29:47 GMT", datetime(2016, 9, 19, 18, 29, 47, tzinfo=timezone.utc)),
        ("2016-09-19T18:29:47Z", datetime(2016, 9, 19, 18, 29, 47, tzinfo=timezone.utc)),
        ("2016-09-19T20:29:47+02:00", datetime(2016, 9, 19, 18, 29, 47, tzinfo=timezone.utc)),
        ("2016-09-19T18:29:47", datetime(2016, 9, 19, 18, 29, 47, tzinfo=timezone.utc)),
        ("", None),
        ("   ", None),
    ],
)
def test_not_before_formats(text: str, expected: datetime | None) -> None:
    assert parse_not_before(text) == expected


def _doc(**event: object) -> str:
    base: dict[str, object] = {
        "EventId": "X",
        "EventType": "Reboot",
        "ResourceType": "VirtualMachine",
        "Resources": ["web-0"],
        "EventStatus": "Scheduled",
        "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
    }
    base.update(event)
    return json.dumps({"DocumentIncarnation": "7", "Events": [base]})


def test_incarnation_as_numeric_string_and_old_api_versions() -> None:
    doc = parse_document(_doc())  # no EventSource, Description or DurationInSeconds (2017-11-01)
    assert doc.incarnation == 7
    (event,) = doc.events
    assert event.duration_seconds is None
    assert event.source == ""
    assert event.description == ""


def test_unknown_type_or_status_is_kept_as_unknown_with_a_warning() -> None:
    doc = parse_document(
        json.dumps(
            {
                "DocumentIncarnation": 3,
                "Events": [
                    json.loads(_doc(EventId="A", EventType="Hibernate"))["Events"][0],
                    json.loads(_doc(EventId="B", EventStatus="Completed"))["Events"][0],
                    json.loads(_doc(EventId="C"))["Events"][0],
                ],
            }
        )
    )
    assert [(e.event_id, e.event_type.value, e.status.value) for e in doc.events] == [
        ("A", "Unknown", "Scheduled"),
        ("B", "Reboot", "Unknown"),
        ("C", "Reboot", "Scheduled"),
    ]
    assert {(w.event_id, w.ignored) for w in doc.warnings} == {("A", False), ("B", False)}
    assert "Hibernate" in doc.warnings[0].reason


def test_unparseable_not_before_is_treated_as_imminent() -> None:
    doc = parse_document(_doc(NotBefore="soon-ish"))
    (event,) = doc.events
    assert event.not_before is None
    assert doc.warnings[0].ignored is False


def test_duration_minus_one_means_unknown() -> None:
    (event,) = parse_document(_doc(DurationInSeconds=-1)).events
    assert event.duration_seconds is None
    (event,) = parse_document(_doc(DurationInSeconds=0)).events
    assert event.duration_seconds == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"DocumentIncarnation": 1, "Events": {}}',
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_documents_raise_the_documented_error(body: bytes) -> None:
    with pytest.raises(MalformedDocumentError):
        parse_document(body)


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        (b'{"DocumentIncarnation": "x", "Events": []}', 0),
        (b'{"DocumentIncarnation": true, "Events": []}', 0),
        (b'{"DocumentIncarnation": ' + b"9" * 5000 + b', "Events": []}', 0),
        (b'{"DocumentIncarnation": 1, "Events": ["x"]}', 0),
        (_doc(Resources="web-0").encode(), 1),
        (_doc(Resources=[1]).encode(), 1),
        (_doc(EventId=5).encode(), 1),
        (_doc(DurationInSeconds="long").encode(), 1),
        (_doc(DurationInSeconds=10**40).encode(), 1),
        (_doc(NotBefore="9999-12-31T23:59:59-23:59").encode(), 1),
    ],
)
def test_one_bad_value_is_a_warning_never_the_whole_document(body: bytes, kept: int) -> None:
    doc = parse_document(body)
    assert len(doc.events) == kept
    assert doc.warnings
    for event in doc.events:
        event.description.encode("utf-8")  # storable: no lone surrogate left


def test_a_lone_surrogate_is_replaced_so_the_event_can_be_stored() -> None:
    (event,) = parse_document(_doc(Description="a\ud800b", Resources=["web-0\udc00"])).events
    assert event.description == "a\ufffdb"
    event.description.encode("utf-8")
    event.resources[0].encode("utf-8")


def test_concerns_compares_names_case_insensitively() -> None:
    (event,) = parse_document(_doc(Resources=["WEB-0", "web-1"])).events
    assert event.concerns("web-0")
    assert event.concerns("Web-1")
    assert not event.concerns("web-2")
    assert not event.concerns("web")
