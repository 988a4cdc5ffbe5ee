"""``drainer status`` and ``drainer history``: what the state database says, for people and scripts."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from drainer.base.errors import EXIT_ACTION_FAILED, EXIT_OK
from drainer.base.events import format_iso
from drainer.base.terminal import printable
from drainer.config import Config
from drainer.decide.core import DrainState, EventRecord, EventState, State, VmState
from drainer.store import outcome
from drainer.store.stamp import last_check
from drainer.store.state import DB_NAME, HistoryEntry, LedgerEntry, StateStore

STATUS_CLEARED = 50  # cleared events `status` lists, newest first


def _say(line: str = "") -> None:
    """Print a line of the text output: IMDS and ARM values in it cannot drive the terminal."""
    print(printable(line))


def _open(config: Config) -> StateStore | None:
    if not (Path(config.state_dir) / DB_NAME).exists():
        return None
    return StateStore(config.state_dir)


def _event_json(record: EventRecord, vm_name: str) -> dict[str, Any]:
    e = record.event
    return {
        "event_id": e.event_id,
        "event_type": e.event_type.value,
        "event_status": e.status.value,
        "state": record.state.value,
        "reason": record.reason,
        "concerns_vm": e.concerns(vm_name) if vm_name else None,
        "not_before": format_iso(e.not_before) or None,
        "duration_seconds": e.duration_seconds,
        "resources": list(e.resources),
        "source": e.source,
        "description": e.description,
        "first_seen": format_iso(record.first_seen),
        "last_seen": format_iso(record.last_seen),
        "started_at": format_iso(record.started_at) or None,
        "cleared_at": format_iso(record.cleared_at) or None,
        **window_json(record),
    }


def window_json(record: EventRecord) -> dict[str, Any]:
    """The maintenance window as this VM lived it (all times UTC, ISO 8601)."""
    out_seconds = None
    if record.left_rotation_at is not None and record.returned_at is not None:
        out_seconds = round((record.returned_at - record.left_rotation_at).total_seconds(), 3)
    return {
        "approval": record.approval or None,
        "left_rotation_at": format_iso(record.left_rotation_at) or None,
        "approved_at": format_iso(record.approved_at) or None,
        "returned_at": format_iso(record.returned_at) or None,
        "out_of_rotation_seconds": out_seconds,
    }


def rotation(vm: VmState, ledger: list[LedgerEntry] | None) -> tuple[bool, str]:
    """Whether the VM is in rotation as the world sees it, and why it is not where drainer decided:
    a drain decided but held or failing has not taken it out until a write succeeded (drainer's
    local record of a removal, ``removed``, or of a record on the NIC, ``on-nic``)."""
    if vm.drain_state is not DrainState.DRAINING:
        return vm.in_rotation, ""
    if any(e.status in ("removed", "on-nic") for e in ledger or []):
        return False, "draining: partly out"
    if vm.held:
        return True, f"draining, {vm.held}"
    if vm.last_error:
        return True, f"draining, failing: {vm.last_error}"
    return True, "draining: not out yet"


def status_json(
    state: State,
    vm_info: dict[str, Any],
    last_check: str | None,
    ledger: list[LedgerEntry] | None = None,
    *,
    state_dir: str = "",
    absent: dict[str, tuple[datetime, int]] | None = None,
    record_problems: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    vm = state.vm
    name = str(vm_info.get("name", ""))
    ordered = sorted(
        state.events.values(),
        key=lambda r: (r.state is EventState.CLEARED, -r.last_seen.timestamp()),
    )
    in_rotation, why = rotation(vm, ledger)
    return {
        "vm": {
            **vm_info,
            "name": name or None,
            "in_rotation": in_rotation,
            "rotation": why or None,
            "drain_state": vm.drain_state.value,
            "since": format_iso(vm.since) or None,
            "held_by": [state.events[k].event.event_id for k in vm.held_by if k in state.events],
            "attempts": vm.attempts,
            "last_error": vm.last_error or None,
            "held": vm.held or None,
            "manual": vm.manual,
            # What drainer took away and will put back (NIC pool references, admin states).
            "removed": [
                {
                    "method": e.method,
                    "resource_id": e.resource_id,
                    "item": e.item,
                    "kind": e.kind,
                    "target": e.target,
                    "status": e.status,
                }
                for e in ledger or []
            ],
            # Resources that answered 404 during a restore, not yet confirmed gone.
            "absent": [
                {"resource_id": rid, "since": format_iso(first), "reads": reads}
                for rid, (first, reads) in sorted((absent or {}).items())
            ],
            # Records on the NICs drainer did not act on (they do not verify), and records that
            # disagree with the local copy, as the last action that read them found them.
            "record_problems": list(record_problems or []),
        },
        "last_reconcile": {
            "at": format_iso(vm.last_reconcile_at) or None,
            "found": vm.last_reconcile or None,
        },
        "state_dir": state_dir or None,
        "last_check": last_check,
        "incarnation": state.incarnation,
        "events": [_event_json(r, name) for r in ordered],
    }


def status(config: Config, *, as_json: bool) -> int:
    store = _open(config)
    if store is None:
        data = status_json(State(), {}, None, state_dir=config.state_dir)
    else:
        try:
            known = store.identity()
            checked = format_iso(last_check(config.state_dir)) or None
            data = status_json(
                # The open events and the most recently cleared ones: the cost does not grow with
                # history (`drainer history` has the rest).
                store.load("recent", recent=STATUS_CLEARED),
                known.to_json() if known is not None else {},
                checked,
                store.ledger(),
                state_dir=config.state_dir,
                absent=store.absent(),
                record_problems=store.record_problems(),
            )
            data["floor_breach"] = store.floor_breach()
        finally:
            store.close()
    health = outcome.summary(
        config.state_dir,
        last_check(config.state_dir),
        disabled=Path(config.disabled_file).exists(),
        poll_interval=config.daemon.poll_interval,
        configuration_errors=configuration_errors(config),
    )
    data = {**health, **data}
    code = EXIT_ACTION_FAILED if health["health"] in ("failing", "stale") else EXIT_OK
    if as_json:
        print(json.dumps(data, indent=2))
        return code
    print_health(health)
    vm = data["vm"]
    said = "IN rotation" if vm["in_rotation"] else "OUT of rotation"
    _say(
        f"VM {vm['name'] or '(not yet identified)'}: {said} ({vm['rotation'] or vm['drain_state']}"
        + (f" since {vm['since']}" if vm["since"] and not vm["rotation"] else "")
        + ")"
    )
    if vm["held_by"]:
        _say(f"  held out by: {', '.join(vm['held_by'])}")
    if vm["manual"]:
        _say("  manual hold: taken out by hand (`drainer restore` releases it)")
    if vm["held"] and not vm["rotation"]:
        _say(f"  drain held back: {vm['held']}")
    for removed in vm["removed"]:
        if removed["method"] == "nic":
            _say(
                f"  removed: {removed['resource_id'].rsplit('/', 1)[-1]}/{removed['item']} from "
                f"{removed['target'].split('/providers/', 1)[-1]} ({removed['status']})"
            )
        else:
            pool = removed["resource_id"].split("/providers/", 1)[-1]
            _say(f"  admin state Down: {removed['item']} in {pool} (was {removed['target']})")
    if vm["last_error"]:
        _say(f"  last error ({vm['attempts']} attempts): {vm['last_error']}")
    for gone in vm["absent"]:
        _say(f"  answered 404 ({gone['reads']} reads since {gone['since']}): {gone['resource_id']}")
    for problem in vm["record_problems"]:
        nic = str(problem.get("nic", "")).rsplit("/", 1)[-1]
        if problem.get("kind") == "unverified":
            _say(f"  UNVERIFIED record on {nic} (since {problem.get('since')}): never acted on")
            _say(f"    why: {problem.get('detail')}")
            _say(f"    tags: {', '.join(problem.get('tags') or [])}")
            _say(f"    by hand: {problem.get('by_hand')}")
        else:
            pools = ", ".join(problem.get("pools") or [])
            _say(f"  records disagree on {nic}: {problem.get('detail')}: {pools}")
    breach = data.get("floor_breach")
    if breach:
        _say(
            f"  last drain below the pool's floor ({breach.get('at')}): "
            + "; ".join(breach.get("what") or [])
        )
    reconciled = data["last_reconcile"]
    _say(
        f"  last reconcile: {reconciled['at'] or 'never'}"
        + (f" ({reconciled['found']})" if reconciled["found"] else "")
    )
    if not data["events"]:
        _say("No scheduled events seen.")
    for e in data["events"]:
        if e["state"] == "active":
            _say(
                f"  window of {e['event_id']}: left rotation {e['left_rotation_at'] or '-'}, "
                f"approval: {e['approval'] or '-'}, approved {e['approved_at'] or '-'}, "
                f"started {e['started_at'] or '-'}"
            )
        when = f" NotBefore {e['not_before']}" if e["not_before"] else ""
        _say(
            f"  {e['event_id']}  {e['event_type']:<9} {e['event_status']:<9} "
            f"{e['state']:<8}{when}  [{', '.join(e['resources'])}]  {e['reason']}"
        )
    return code


def configuration_errors(config: Config) -> tuple[str, ...]:
    """What the configuration keeps from working as meant, checked now as a run would: a
    ``[restore] health_command`` the restore gate refuses."""
    if not config.restore.health_command:
        return ()
    from drainer.act.health import configuration_error  # noqa: PLC0415 - only with a health command

    gate = configuration_error(config)
    return (gate,) if gate else ()


def print_health(health: dict[str, Any]) -> None:
    """The answer to "is drainer working on this VM?", first."""
    word = health["health"]
    why = {
        "ok": "the last check succeeded",
        "failing": f"the last {health['consecutive_failures']} check(s) failed",
        "stale": "no successful check for a while: is drainer-check.timer or drainer.service running?",
        "disabled": "the kill-switch file exists: drainer does nothing",
        "unknown": "no check has run yet",
    }[word]
    _say(f"health: {word.upper()} ({why})")
    _say(f"  last successful check: {health['last_successful_check'] or 'never'}")
    failure = health["last_failed_check"]
    if failure:
        _say(f"  last failed check: {failure['at']}: {failure['error']}")
    if health["failing_since"]:
        _say(f"  failing since: {health['failing_since']}")
    for error in health.get("configuration_errors") or []:
        _say(f"  configuration error: {error}")
    _say(f"  state dir: {health['state_dir']}")


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    t = entry.transition
    return {
        "seq": entry.seq,
        "at": format_iso(entry.at),
        "subject": t.subject,
        "event_id": t.event_id or None,
        "event_type": t.event_type or None,
        "from_state": t.from_state,
        "to_state": t.to_state,
        "reason": t.reason,
    }


def history(config: Config, *, as_json: bool, event_id: str | None, limit: int, windows: bool = False) -> int:
    store = _open(config)
    entries: list[HistoryEntry] = []
    records: list[EventRecord] = []
    if store is not None:
        try:
            entries = store.history(event_id=event_id, limit=max(1, limit))
            records = [
                r
                for r in store.load().events.values()
                if r.left_rotation_at is not None and (event_id is None or r.event.key == event_id.casefold())
            ]
        finally:
            store.close()
    records.sort(key=lambda r: r.first_seen)
    if as_json:
        if windows:
            rows = [
                {
                    "event_id": r.event.event_id,
                    "event_type": r.event.event_type.value,
                    "started_at": format_iso(r.started_at) or None,
                    "cleared_at": format_iso(r.cleared_at) or None,
                    **window_json(r),
                }
                for r in records
            ]
            print(json.dumps(rows, indent=2))
        else:
            print(json.dumps([_history_json(e) for e in entries], indent=2))
        return EXIT_OK
    if records:
        _say("Maintenance windows (UTC):")
        for line in format_windows(records):
            _say(f"  {line}")
        _say()
    if not entries:
        _say("No history yet.")
    for line in format_history(entries):
        _say(line)
    return EXIT_OK


def _hms(value: datetime | None) -> str:
    return value.strftime("%H:%M:%S") if value is not None else "-"


def format_windows(records: list[EventRecord]) -> list[str]:
    lines = [
        f"{'event':<38} {'type':<9} {'left':>8} {'approved':>8} {'started':>8} {'cleared':>8} "
        f"{'returned':>8}  out of rotation"
    ]
    for r in records:
        window = window_json(r)
        out = (
            f"{window['out_of_rotation_seconds']:.1f}s"
            if window["out_of_rotation_seconds"] is not None
            else "-"
        )
        lines.append(
            f"{r.event.event_id:<38} {r.event.event_type.value:<9} {_hms(r.left_rotation_at):>8} "
            f"{_hms(r.approved_at):>8} {_hms(r.started_at):>8} {_hms(r.cleared_at):>8} "
            f"{_hms(r.returned_at):>8}  {out}"
        )
    return lines


def format_history(entries: list[HistoryEntry]) -> list[str]:
    lines = []
    for entry in entries:
        t = entry.transition
        what = t.subject if not t.event_id else f"{t.event_type} {t.event_id}"
        lines.append(f"{format_iso(entry.at)}  {what:<24} {t.from_state} -> {t.to_state}  ({t.reason})")
    return lines
