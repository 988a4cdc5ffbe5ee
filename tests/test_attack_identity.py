"""A known identity stands (issue 20): within one boot, instance metadata failing (429, 5xx, time-outs)
while Scheduled Events answer normally must not stop a drain; only a different identity does (that
one: tests/test_truth.py, "the same boot with a cached identity of another VM"). Each case failed
before (every run ended at the identity re-read before the drain) and passes now."""

from __future__ import annotations

from typing import Any

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import Agent, log_records
from tests.test_truth import ok, pools_of, tagged, two_pools

__all__ = ["tagged", "two_pools"]  # fixtures re-used from tests/test_truth.py

FAULTS: dict[str, dict[str, Any]] = {
    "throttled": {"status": 429, "retry_after": "1"},
    "unavailable": {"status": 503},
    "timing-out": {"status": 200, "delay": 1.5},  # the tests' IMDS read timeout is 1 s
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_instance_metadata_failing_does_not_stop_a_preempt(
    tagged: Agent, two_pools: EmulatorControl, fault: str
) -> None:
    ok(tagged.check())  # this boot's identity, read from IMDS and kept
    two_pools.fault(match="/metadata/instance", count=10_000, **FAULTS[fault])
    two_pools.schedule("Preempt", ["web-0"])
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == []
    said = [r for r in log_records(done.stderr) if "this boot's identity" in r.get("event", "")]
    assert said and said[0]["level"] == "warning", done.stderr[-2000:]
