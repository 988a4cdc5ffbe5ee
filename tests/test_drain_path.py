"""The drain path (issue 14): a VM's NICs are written at once, the operation poll honours Azure's
Retry-After, and `status` / `history` import neither `requests` nor the Azure SDK."""

from __future__ import annotations

import itertools
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent

NICS = ("web-0-nic", "web-0-nic2", "web-0-nic3", "web-0-nic4")


def _four_nics(control: EmulatorControl) -> None:
    control.load_balancer_with("lb-web", "web-pool", ["web-1", "web-2"])
    assert control.nics_in_pool("web-0", len(NICS), "lb-web", "web-pool") == list(NICS)


def _pools(control: EmulatorControl) -> dict[str, list[str]]:
    return {nic: control.nic_pools(nic) for nic in NICS}


def test_four_nics_are_written_at_once_and_restored_exactly(agent: Agent, control: EmulatorControl) -> None:
    _four_nics(control)
    before = _pools(control)
    assert all(before.values())
    control.arm_settings(put_delay=0.5)  # each PUT takes a while: concurrent writes overlap
    event = control.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert all(not pools for pools in _pools(control).values())
    assert control.state()["max_concurrent_puts"] == len(NICS), "the NICs were written one after another"
    control.remove(event)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    assert _pools(control) == before


def test_one_nic_failing_fails_the_drain_and_the_next_run_completes_it(
    agent: Agent, control: EmulatorControl
) -> None:
    _four_nics(control)
    control.fault(match="/networkInterfaces/web-0-nic3", method="PUT", status=500, count=20)
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 1
    control.clear_faults()
    assert agent.check().returncode == 0
    assert all(not pools for pools in _pools(control).values())


def test_status_and_history_import_neither_requests_nor_the_sdk(
    agent: Agent, pool: EmulatorControl, tmp_path: Path
) -> None:
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0  # a state with an event and a drained VM
    for command in (("status",), ("status", "--json"), ("history",), ("history", "--json", "--windows")):
        out = tmp_path / "modules.txt"
        done = agent.run(*command, TEST_MODULES_OUT=str(out))
        assert done.returncode == 0, done.stderr
        modules = set(out.read_text().split())
        heavy = sorted(m for m in modules if m.split(".")[0] in {"requests", "urllib3", "azure"})
        assert heavy == [], f"{' '.join(command)} imported {heavy[:5]}"


def test_the_operation_poll_honours_azures_retry_after(agent: Agent, pool: EmulatorControl) -> None:
    """Azure's answer to an operation still InProgress says when to ask again (Retry-After); the SDK
    waits that long instead of drainer's poll_interval (0.05 s here), and asks at once after the PUT."""
    pool.arm_settings(lro_polls=2, status_retry_after="1")
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    polls = [r["at"] for r in pool.requests() if "/operations/" in r["path"]]
    assert len(polls) == 6  # the intent's operation, then the drain's: InProgress, InProgress, Succeeded
    polls = polls[3:]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert all(gap >= 1.0 for gap in gaps), gaps


def test_the_process_wide_arm_limit_holds_across_concurrent_nic_writes(
    agent: Agent, control: EmulatorControl
) -> None:
    """Every ARM request (reads, writes, operation polls, from any of the concurrent NIC writers) takes
    a token: in any stretch of t seconds at most burst + rate x t requests reach ARM."""
    rate, burst = 4.0, 3
    agent.config_text = DEFAULT_CONFIG.replace(
        "[azure]\n", f"[azure]\nmax_calls_per_second = {rate}\nmax_call_burst = {burst}\n"
    )
    _four_nics(control)
    control.schedule("Reboot", ["web-0"], not_before_in=900)
    done = agent.check()
    assert done.returncode == 0, done.stderr
    times = sorted(r["at"] for r in control.requests() if str(r["path"]).startswith("/subscriptions/"))
    assert len(times) > 4 * burst  # enough requests that the limit must have spread them
    for i, j in itertools.combinations(range(len(times)), 2):
        # 250 ms of slack: the emulator stamps a request when its thread has read it, not when it was
        # sent, and on a busy machine requests sent apart are read together (two CI failures at 50 ms).
        # Without the limit a dozen requests arrive within a few hundred ms: still far above this.
        assert j - i + 1 <= burst + rate * (times[j] - times[i] + 0.25), (i, j, times[j] - times[i])
