"""The IMDS client against the emulator over loopback: headers, proxies, retries, deadline, errors."""

from __future__ import annotations

import json
import time

import pytest

from drainer.base.errors import ImdsHttpError, ImdsUnavailableError, MalformedDocumentError
from drainer.config import ImdsConfig
from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from drainer.io.imds import ImdsClient
from tests.conftest import EXAMPLES


def _client(emulator: RunningEmulator, **overrides: float) -> ImdsClient:
    settings = {"deadline": 4.0, "read_timeout": 1.0, "connect_timeout": 0.5, **overrides}
    return ImdsClient(ImdsConfig(endpoint=emulator.vm_url("web-0"), **settings))  # type: ignore[arg-type]


def _event_requests(control: EmulatorControl) -> list[dict[str, object]]:
    return [r for r in control.requests() if r["path"] == "/metadata/scheduledevents"]


def test_headers_and_api_version(emulator: RunningEmulator, control: EmulatorControl) -> None:
    client = _client(emulator)
    client.scheduled_events()
    client.scheduled_events()
    seen = _event_requests(control)
    assert [r["metadata"] for r in seen] == ["true", "true"]
    assert seen[0]["query"] == "api-version=2020-07-01"
    ids = [r["request_id"] for r in seen]
    assert all(ids) and ids[0] != ids[1]  # a fresh request id each time
    assert all(r["forwarded"] is None for r in seen)


def test_environment_proxies_are_ignored(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy that does not exist: if it were used, every request would fail.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    assert _client(emulator).scheduled_events().incarnation == 1


@pytest.mark.parametrize("status", [404, 410, 429, 500, 503])
def test_retryable_statuses_are_retried(
    emulator: RunningEmulator, control: EmulatorControl, status: int
) -> None:
    control.fault(match="scheduledevents", status=status, count=2)
    assert _client(emulator).scheduled_events().incarnation == 1
    statuses = [r["status"] for r in _event_requests(control)]
    assert statuses == ["fault", "fault", 200]


def test_retry_after_is_honoured(emulator: RunningEmulator, control: EmulatorControl) -> None:
    control.fault(match="scheduledevents", status=429, count=1, retry_after="1")
    _client(emulator).scheduled_events()
    first, second = _event_requests(control)
    assert float(second["at"]) - float(first["at"]) >= 0.9  # type: ignore[arg-type]


def test_retry_after_beyond_the_deadline_fails_at_once(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    control.fault(match="scheduledevents", status=503, count=5, retry_after="120")
    started = time.monotonic()
    with pytest.raises(ImdsUnavailableError) as info:
        _client(emulator, deadline=3.0).scheduled_events()
    assert time.monotonic() - started < 3.0
    assert "deadline" in str(info.value)
    assert "/metadata/scheduledevents" in info.value.url


def test_persistent_failure_stops_at_the_deadline_with_the_last_status(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    control.fault(match="scheduledevents", status=500, count=1000)
    with pytest.raises(ImdsUnavailableError) as info:
        _client(emulator, deadline=1.5).scheduled_events()
    assert len(_event_requests(control)) >= 2
    assert info.value.status in (500, None)


def test_client_errors_are_not_retried(emulator: RunningEmulator, control: EmulatorControl) -> None:
    control.fault(match="scheduledevents", status=400, count=3)
    with pytest.raises(ImdsHttpError) as info:
        _client(emulator).scheduled_events()
    assert info.value.status == 400
    assert "Bad request" in str(info.value)
    assert len(_event_requests(control)) == 1


def test_slow_answer_times_out_then_succeeds(emulator: RunningEmulator, control: EmulatorControl) -> None:
    control.fault(match="scheduledevents", status=200, count=1, delay=1.5)
    assert _client(emulator, read_timeout=0.5).scheduled_events().incarnation == 1


def test_connection_reset_is_retried(emulator: RunningEmulator, control: EmulatorControl) -> None:
    control.fault(match="scheduledevents", reset=True, count=1)
    assert _client(emulator).scheduled_events().incarnation == 1


def test_unreachable_imds_is_a_typed_error() -> None:
    client = ImdsClient(ImdsConfig(endpoint="http://127.0.0.1:9", deadline=1.0, connect_timeout=0.2))
    with pytest.raises(ImdsUnavailableError) as info:
        client.scheduled_events()
    assert "127.0.0.1:9" in str(info.value)


def test_malformed_and_huge_bodies(emulator: RunningEmulator, control: EmulatorControl) -> None:
    control.set_document("{not json")
    with pytest.raises(MalformedDocumentError):
        _client(emulator).scheduled_events()
    control.set_document('{"DocumentIncarnation": 1, "Events": [], "pad": "' + "x" * 2_000_000 + '"}')
    with pytest.raises(MalformedDocumentError, match="larger than"):
        _client(emulator).scheduled_events()


def test_verbatim_example_served_by_the_emulator(emulator: RunningEmulator, control: EmulatorControl) -> None:
    control.set_document((EXAMPLES / "se_msdocs_example_incarnation_2.json").read_bytes())
    doc = _client(emulator).scheduled_events()
    assert doc.incarnation == 2
    assert doc.events[0].resources == ("WestNO_0", "WestNO_1")


def test_instance_metadata_identity(emulator: RunningEmulator) -> None:
    info = _client(emulator).instance()
    assert info.name == "web-0"
    assert info.resource_group == "rg-drainer"
    assert info.resource_id.endswith("/providers/Microsoft.Compute/virtualMachines/web-0")
    assert info.subscription_id


def test_instance_metadata_from_the_spec_example() -> None:
    from drainer.io.imds import InstanceInfo

    spec = json.loads(
        (EXAMPLES / "imds_spec_2018-10-01_getInstanceMetadata_with_error_examples.json").read_text()
    )
    info = InstanceInfo.from_json(spec["responses"]["200"]["body"], source="spec")
    assert info.name == "examplevmname"
    assert info.scale_set == "crpteste9vflji9"
    assert info.vm_id == "02aab8a4-74ef-476e-8182-f6d2ba4166a6"


def test_approval_starts_the_event(emulator: RunningEmulator, control: EmulatorControl) -> None:
    event_id = control.schedule("Reboot", ["web-0", "web-1"])
    client = _client(emulator)
    client.approve([event_id])
    (event,) = client.scheduled_events().events
    assert event.status.value == "Started"
    assert control.state()["approvals"][0]["event_id"] == event_id


def test_emulator_rejects_requests_without_the_metadata_header(emulator: RunningEmulator) -> None:
    import requests

    session = requests.Session()
    session.trust_env = False
    answer = session.get(f"{emulator.url}/metadata/scheduledevents?api-version=2020-07-01")
    assert answer.status_code == 400
    answer = session.get(f"{emulator.url}/metadata/scheduledevents", headers={"Metadata": "true"})
    assert answer.status_code == 400
    assert "newest-versions" in answer.json()


def test_without_etags_the_same_bytes_are_parsed_once_and_any_other_bytes_again(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    """IMDS is not documented to send ETags: a body byte for byte the same as the last one is the same
    document (no parse), and a body that differs in a single byte is parsed anew."""
    control.imds_etags(False)
    body = json.dumps(
        {
            "DocumentIncarnation": 3,
            "Events": [
                {
                    "EventId": "E1",
                    "EventType": "Reboot",
                    "ResourceType": "VirtualMachine",
                    "Resources": ["web-0"],
                    "EventStatus": "Scheduled",
                    "NotBefore": "Mon, 30 Nov 2026 10:00:00 GMT",
                }
            ],
        }
    )
    control.set_document(body)
    client = _client(emulator)
    first = client.scheduled_events()
    assert client.scheduled_events() is first
    assert [r["status"] for r in _event_requests(control)] == [200, 200]  # full answers, no 304
    control.set_document(body.replace("10:00:00", "10:00:01"))  # same length, one byte
    moved = client.scheduled_events()
    assert moved is not first
    assert moved.events[0].not_before is not None and moved.events[0].not_before.second == 1
    control.set_document(body)
    assert client.scheduled_events() == first  # back to the first bytes: parsed again, equal
