"""Attacks on the daemon's shortcuts for other VMs' events (drainer/decide/inert.py, the core's skip of
unchanged other-VM events, the IMDS body cache, the state cache, the emulator's rendered document).
Each test plays a scenario through real drainer processes against the emulator, over HTTP."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent


def _record(agent: Agent, event_id: str) -> dict[str, Any]:
    events = agent.status()["events"]
    return next(e for e in events if e["event_id"].casefold() == event_id.casefold())


def _fresh_agent(agent: Agent, tmp: Path) -> Agent:
    """Another agent for the same VM with an empty state directory: what a fresh one-shot check decides."""
    tmp.mkdir()
    return Agent(emulator=agent.emulator, tmp=tmp, zygote=agent.zygote, config_text=agent.config_text)


def test_an_event_recorded_as_another_vms_under_a_former_vm_name_is_folded_again(
    agent: Agent, pool: EmulatorControl, tmp_path: Path
) -> None:
    """The skip of unchanged other-VM events trusts the record's reason "does not list <name>". It
    once kept the reason while a record stayed other-vm: with ``[vm] name`` set wrongly for a while and
    then corrected, an event that came to list this VM meanwhile kept the reason written for the
    correct name, and every later run skipped it (found by review; the reason is now always rewritten)."""
    assert agent.check().returncode == 0
    event_id = pool.schedule("Reboot", ["web-1"], not_before_in=900)
    assert agent.check().returncode == 0  # other-vm, "does not list web-0"
    # The operator sets a wrong name for a while; meanwhile Resources gains web-0.
    agent.config_text = DEFAULT_CONFIG + '\n[vm]\nname = "web-9"\n'
    pool.schedule("Reboot", ["web-1", "web-0"], event_id=event_id, not_before_in=900)
    assert agent.check().returncode == 0  # other-vm for web-9: right for that name
    # The name is corrected: the event lists web-0, so the VM must go out, as a fresh check decides.
    agent.config_text = DEFAULT_CONFIG
    for _ in range(2):
        assert agent.check().returncode == 0
    record, vm = _record(agent, event_id), agent.status()["vm"]
    fresh = _fresh_agent(agent, tmp_path / "fresh")
    assert fresh.check().returncode == 0
    assert (_record(fresh, event_id)["state"], fresh.status()["vm"]["drain_state"]) == ("active", "drained")
    assert record["concerns_vm"] is True
    assert (record["state"], vm["drain_state"]) == ("active", "drained"), record


def _body(incarnation: int, events: list[dict[str, Any]]) -> str:
    return json.dumps({"DocumentIncarnation": incarnation, "Events": events})


def _raw_event(event_id: str, resources: list[str], status: str = "Scheduled") -> dict[str, Any]:
    return {
        "EventId": event_id,
        "EventType": "Reboot",
        "ResourceType": "VirtualMachine",
        "Resources": resources,
        "EventStatus": status,
        "NotBefore": "" if status == "Started" else "Mon, 30 Nov 2099 10:00:00 GMT",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


def test_the_daemon_follows_byte_identical_bodies_going_back_and_an_operator_meanwhile(
    agent: Agent, pool: EmulatorControl
) -> None:
    """HELD (claims 1a, 1b, 2): IMDS without ETags serving 300 other VMs' events. The document goes
    back to byte-identical earlier bodies (this VM's event listed, gone, listed again), another VM's
    event gains this VM's name in upper case, and an operator's `drainer drain`/`restore` change the
    state under the daemon: the daemon follows each, and history records each transition."""
    from tests.test_daemon import Daemon, _in_pool, daemon_config, free_port, more_polls, wait_until

    daemon_config(agent, free_port())
    pool.imds_etags(False)
    others = [_raw_event(f"0000{i:04d}-AAAA-BBBB-CCCC-DDDDDDDDDDDD", ["web-1"]) for i in range(300)]
    mine = _raw_event("11111111-2222-3333-4444-555555555555", ["web-0"])
    idle, with_mine = _body(5, others), _body(6, [*others, mine])
    pool.set_document(idle)
    daemon = Daemon(agent)
    daemon.start()
    try:

        def quiet() -> None:
            more_polls(pool, 3)

        def states(event_id: str) -> list[str]:
            return [h["to_state"] for h in agent.history() if h.get("event_id") == event_id]

        wait_until(lambda: len(agent.status()["events"]) >= 300, what="the other VMs' events recorded")
        quiet()
        for round_ in range(2):
            pool.set_document(with_mine)  # byte for byte the body of round 0 again in round 1
            wait_until(lambda: not _in_pool(pool), what=f"the drain, round {round_}")
            quiet()
            pool.set_document(idle)  # byte for byte the first body again
            wait_until(lambda: _in_pool(pool), what=f"the restore, round {round_}")
            quiet()
        assert states(mine["EventId"]) == ["active", "cleared", "active/Scheduled", "cleared"]
        # An operator takes the VM out by hand while the daemon reuses its document.
        wait_until(lambda: agent.run("drain").returncode == 0, what="drainer drain (lock free)")
        quiet()
        assert not _in_pool(pool) and agent.status()["vm"]["manual"] is True
        wait_until(lambda: agent.run("restore").returncode == 0, what="drainer restore (lock free)")
        wait_until(lambda: _in_pool(pool), what="back after the operator's restore")
        quiet()
        # One of the 300 gains this VM's name, in another letter case.
        changed = [dict(e) for e in others]
        changed[150] = {**changed[150], "Resources": ["web-1", "WEB-0"]}
        pool.set_document(_body(7, changed))
        wait_until(lambda: not _in_pool(pool), what="the drain for the event that now lists WEB-0")
        assert states(others[150]["EventId"])[-1] == "active/Scheduled"
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def _get_document(url: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/metadata/scheduledevents?api-version=2020-07-01", headers={"Metadata": "true"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as answer:
        decoded: dict[str, Any] = json.loads(answer.read())
        return decoded


def test_the_emulators_rendered_document_shows_every_change_at_the_next_get(
    agent: Agent, control: EmulatorControl
) -> None:
    """HELD (claim 3): after each kind of change through the control API (and an approval through
    IMDS), the very next GET serves it."""
    url = agent.emulator.url

    def ids() -> dict[str, tuple[str, list[str]]]:
        return {e["EventId"]: (e["EventStatus"], e["Resources"]) for e in _get_document(url)["Events"]}

    first = control.schedule("Reboot", ["web-1"], not_before_in=900)
    assert ids() == {first: ("Scheduled", ["web-1"])}
    control.schedule("Reboot", ["web-1", "web-0"], event_id=first, not_before_in=900)
    assert ids() == {first: ("Scheduled", ["web-1", "web-0"])}
    control.start(first)
    assert ids() == {first: ("Started", ["web-1", "web-0"])}
    second = control.schedule("Freeze", ["web-2"], not_before_in=-1)  # NotBefore passed: starts
    assert ids()[second][0] == "Started"
    control.set_incarnation(42)
    assert _get_document(url)["DocumentIncarnation"] == 42
    control.set_document('{"DocumentIncarnation": 7, "Events": []}')
    assert ids() == {}
    control.clear_document()
    assert set(ids()) == {first, second}
    third = control.schedule("Reboot", ["web-0"], not_before_in=900)
    body = json.dumps({"StartRequests": [{"EventId": third}]}).encode()
    request = urllib.request.Request(
        f"{url}/metadata/scheduledevents?api-version=2020-07-01",
        data=body,
        headers={"Metadata": "true", "Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as answer:
        assert answer.status == 200
    assert ids()[third][0] == "Started"
    control.remove(first)
    assert set(ids()) == {second, third}
    control.reset()
    assert ids() == {}


def test_keys_of_follows_the_events_of_a_replaced_document() -> None:
    """A document whose events were replaced (``_replace(events=...)``, as drainer.decide.inert does) reports
    the new events' keys (a cached key field once reported the old ones; found by review)."""
    from drainer.base.events import document_from_json

    raw = {"DocumentIncarnation": 1, "Events": [_raw_event("AAAA", ["web-1"])]}
    document = document_from_json(raw)
    other = document_from_json({"DocumentIncarnation": 1, "Events": [_raw_event("BBBB", ["web-0"])]})
    replaced = document._replace(events=other.events)
    assert replaced.keys_of() == tuple(e.key for e in replaced.events)
