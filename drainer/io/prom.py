"""The Prometheus side of ``drainer.base.metrics``: a registry, the daemon's /metrics endpoint, and the
node_exporter textfile for one-shot runs.

One-shot runs are separate processes, so their counters are carried from run to run in
``<state_dir>/metrics.json``. Both files are written by ``drainer.io.safefile.write_atomic`` (a random
``O_EXCL`` temporary file, then a rename: never through a symlink).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from drainer.base import metrics
from drainer.io.safefile import write_atomic

_COUNTERS = {
    "events_seen": (
        "drainer_events_seen_total",
        "Scheduled events seen for the first time",
        ("event_type", "event_status"),
    ),
    "actions": (
        "drainer_actions_total",
        "Drains, restores, reconciles and approvals by result",
        ("action", "result"),
    ),
    "dropped": (
        "drainer_dropped_total",
        "Records dropped from a restore because their NIC or pool was confirmed gone",
        ("kind",),
    ),
    "unverified_records": (
        "drainer_unverified_records_total",
        "drainer records on NICs that did not verify (never acted on), by reason",
        ("reason",),
    ),
    "floor_breaches": (
        "drainer_floor_breaches_total",
        "Drains the platform forced while they took a pool below its floor",
        (),
    ),
    "imds_requests": ("drainer_imds_requests_total", "IMDS requests by HTTP status", ("status",)),
    "arm_requests": ("drainer_arm_requests_total", "ARM requests by HTTP status", ("status",)),
    "hook_runs": ("drainer_hook_runs_total", "Hook runs by phase and result", ("phase", "result")),
}
_GAUGES = {
    "drain_state": ("drainer_drain_state", "1 for the VM's current drain state", ("state",)),
    "out_of_rotation": (
        "drainer_out_of_rotation_seconds",
        "Time out of rotation of the last completed maintenance",
        ("event_type",),
    ),
    "last_check": (
        "drainer_last_successful_check_timestamp_seconds",
        "Unix time of the last successful check",
        (),
    ),
}


class PromRecorder:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counters: dict[str, Counter] = {
            key: Counter(name.removesuffix("_total"), doc, labelnames, registry=self.registry)
            for key, (name, doc, labelnames) in _COUNTERS.items()
        }
        self.gauges: dict[str, Gauge] = {
            key: Gauge(name, doc, labelnames, registry=self.registry)
            for key, (name, doc, labelnames) in _GAUGES.items()
        }
        self.durations = Histogram(
            "drainer_action_duration_seconds",
            "Duration of drains, restores and approvals",
            ("action",),
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self._counts: dict[str, dict[str, float]] = {key: {} for key in _COUNTERS}

    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        counter = self.counters[name]
        (counter.labels(**labels) if labels else counter).inc(value)
        key = json.dumps(dict(labels), sort_keys=True)
        self._counts[name][key] = self._counts[name].get(key, 0.0) + value

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.durations.labels(**labels).observe(value)

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        gauge = self.gauges[name]
        (gauge.labels(**labels) if labels else gauge).set(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- one-shot persistence -------------------------------------------------------------------

    def load_counts(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return
        for name, series in data.items() if isinstance(data, dict) else []:
            if name in self.counters and isinstance(series, dict):
                for key, value in series.items():
                    try:
                        self.inc(name, json.loads(key), float(value))
                    except (ValueError, TypeError, RecursionError):
                        continue

    def save_counts(self, path: Path) -> None:
        write_atomic(path, json.dumps(self._counts).encode(), 0o600)


def enable() -> PromRecorder:
    # No `_created` series: they double the output and nobody graphs counter creation times.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    recorder = PromRecorder()
    metrics.current = recorder
    return recorder


def write_textfile(recorder: PromRecorder, path: str) -> None:
    """Atomically, never through a symlink (prometheus_client's own writer opens a predictable
    temporary name by path, which a planted symlink would redirect). Raises OSError."""
    from drainer.io.trust import TrustError, check  # noqa: PLC0415

    directory = str(Path(path).absolute().parent)
    try:  # the directory as a whole: a component another user owns could be swapped for a symlink
        check(directory, strict_leaf=True)
    except TrustError as exc:
        raise OSError(f"refused: {exc}") from exc
    write_atomic(path, generate_latest(recorder.registry), 0o644)
