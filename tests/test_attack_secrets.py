"""Secrets by value, and ARM answers beyond reason (issue 20), through the CLI against the emulator.
Each case failed before and passes now:

- the emulator's tokens are not JWT-shaped (``emulator.<random>``): an ARM error that quotes the
  caller's token back must not bring it to stderr, ``last-failure.json``, ``state.db`` or ``status``:
  drainer masks the exact token values it holds, whatever their shape;
- an ARM body nested 100,000 deep is one ARM error line (exit 1), not a RecursionError traceback.
"""

from __future__ import annotations

import json

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import Agent
from tests.test_truth import ok, pools_of, tagged, two_pools

__all__ = ["tagged", "two_pools"]  # fixtures re-used from tests/test_truth.py


def everything_written(agent: Agent) -> dict[str, bytes]:
    """Every file in the state dir, and what status and history print."""
    found = {p.name: p.read_bytes() for p in agent.state_dir.iterdir() if p.is_file()}
    for args in (["status"], ["status", "--json"], ["history", "--json"]):
        done = agent.run(*args)
        found[" ".join(args)] = (done.stdout + done.stderr).encode()
    return found


@pytest.mark.parametrize("status", [400, 403])
def test_a_token_quoted_back_by_arm_is_masked_everywhere(
    tagged: Agent, two_pools: EmulatorControl, emulator: RunningEmulator, status: int
) -> None:
    body = {"error": {"code": "InvalidRequest", "message": "The request with token %TOKEN% was rejected."}}
    two_pools.fault(
        match="/networkInterfaces/web-0-nic", method="PUT", status=status, count=100,
        body=json.dumps(body), echo_token=True,
    )  # fmt: skip
    two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check()
    assert done.returncode == 1
    assert "was rejected" in done.stderr  # the error itself is there, with the token masked
    tokens = set(emulator.model.tokens)
    assert tokens and all(not t.startswith("eyJ") for t in tokens)  # not JWT-shaped
    written = {"stderr of the check": done.stderr.encode(), **everything_written(tagged)}
    assert "last-failure.json" in written or "failing.json" in written
    leaks = [where for where, data in written.items() for t in tokens if t.encode() in data]
    assert leaks == [], f"the token reached {leaks}"


@pytest.mark.parametrize("where", ["a NIC", "an error"])
def test_an_arm_answer_nested_beyond_reason_is_one_error_line(
    tagged: Agent, two_pools: EmulatorControl, where: str
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    if where == "a NIC":
        two_pools.fault(match="/networkInterfaces/web-0-nic", method="GET", status=200, count=100, body=deep)
    else:
        nested = '{"error": {"code": "Deep", "message": "x", "details": ' + deep + "}}"
        two_pools.fault(
            match="/networkInterfaces/web-0-nic", method="PUT", status=400, count=100, body=nested
        )
    event_id = two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check()
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr, done.stderr[-3000:]
    failed = [line for line in done.stderr.splitlines() if "drain failed" in line]
    assert len(failed) == 1 and ("write NIC" in failed[0] or "read NIC" in failed[0]), done.stderr[-3000:]
    if where == "a NIC":  # (the SDK itself shrugs off an error body it cannot parse)
        assert "nested too deeply" in failed[0]
    two_pools.clear_faults()
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    ok(tagged.check())
