"""The commit step: what every action's outcome goes through (history lines logged)."""

from __future__ import annotations

from typing import Any

from drainer.decide.model import Transition


def log_transitions(log: Any, transitions: list[Transition] | tuple[Transition, ...]) -> None:
    for t in transitions:
        fields: dict[str, Any] = {"from_state": t.from_state, "to_state": t.to_state}
        if t.event_id:
            fields["event_id"] = t.event_id
            fields["event_type"] = t.event_type
        log.info(f"{t.subject} transition", reason=t.reason, **fields)
