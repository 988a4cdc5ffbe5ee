"""Metrics, recorded through one small interface so nothing imports prometheus_client unless metrics
are enabled (``[metrics] enabled``): the default recorder does nothing.

Families (Prometheus names; see the README for their meaning):
  drainer_events_seen_total{event_type,event_status}        counter
  drainer_drain_state{state}                                gauge, 1 for the current state
  drainer_actions_total{action,result}                      counter (drain/restore/approve; ok/failed/held)
  drainer_action_duration_seconds{action}                   histogram
  drainer_out_of_rotation_seconds{event_type}               gauge, the last completed window
  drainer_imds_requests_total{status}                       counter
  drainer_arm_requests_total{status}                        counter
  drainer_hook_runs_total{phase,result}                     counter
  drainer_unverified_records_total{reason}                  counter (records on NICs never acted on)
  drainer_last_successful_check_timestamp_seconds           gauge
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Recorder(Protocol):
    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None: ...
    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None: ...
    def set(self, name: str, labels: Mapping[str, str], value: float) -> None: ...


class _Null:
    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        return None

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        return None

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        return None


current: Recorder = _Null()  # replaced by ``drainer.io.prom.enable`` when metrics are on


def record_drain_state(state: str) -> None:
    for name in ("in_rotation", "draining", "drained", "restoring"):
        current.set("drain_state", {"state": name}, 1.0 if name == state else 0.0)


def labels(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items()}
