"""Claim 4 break: within one boot, instance metadata answering a malformed document nested too deep
for the JSON parser is not "a failure of instance metadata" (cached identity used, drain goes ahead):
json.loads raises RecursionError in drainer/io/imds.py `instance()`, the run dies with a traceback
(exit 70) before the drain, on every run, so a Preempt (30 s notice) is never drained. Every other
malformed answer (not JSON, truncated, [], missing vmId ...) and 429/5xx/timeouts/resets do work.

Run: .venv/bin/python -m pytest attacks/test_identity_deep_json_crashes.py -n0 -q
"""

from __future__ import annotations

from tests.attacks3.helpers import pools_of
from tests.test_truth import ok


def test_deeply_nested_instance_metadata_stops_a_preempt_drain(tagged, two_pools):
    ok(tagged.check())  # identity read and verified in this boot
    two_pools.fault(match="/metadata/instance", count=1000, status=200, body="[" * 100000 + "]" * 100000)
    two_pools.schedule("Preempt", ["web-0"])
    for _ in range(2):
        done = tagged.check()
        # expected: a warning that instance metadata failed, this boot's identity used, the drain done
        assert "Traceback" not in done.stderr and done.returncode != 70, done.stderr[-1200:]
    assert pools_of(two_pools, "web-0-nic") == []
