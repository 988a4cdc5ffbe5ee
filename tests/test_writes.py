"""Write only on change (issue 14): a run that observes nothing new writes nothing to the state
database (no transaction, no fsync), and retention keeps what `status` and `history` promise. Through
the CLI against the emulator; a write is seen as a change of the database files (a commit appends to
the WAL; a checkpoint rewrites the database)."""

from __future__ import annotations

from pathlib import Path

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent


def _files(state_dir: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for name in ("state.db", "state.db-wal"):
        path = state_dir / name
        if path.exists():
            info = path.stat()
            out[name] = (info.st_mtime_ns, info.st_size)
    return out


def test_an_event_for_another_vm_listed_unchanged_writes_nothing(
    agent: Agent, control: EmulatorControl
) -> None:
    assert agent.check().returncode == 0
    control.schedule("Reboot", ["web-1"], not_before_in=900)
    assert agent.check().returncode == 0  # a new event: one write
    before = _files(agent.state_dir)
    for _ in range(3):
        assert agent.check().returncode == 0
        assert _files(agent.state_dir) == before, "nothing new was observed: nothing may be written"


def test_a_vm_held_out_by_an_unchanged_event_writes_nothing(agent: Agent, pool: EmulatorControl) -> None:
    assert agent.check().returncode == 0
    pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0  # drained
    before = _files(agent.state_dir)
    for _ in range(3):
        assert agent.check().returncode == 0
        assert _files(agent.state_dir) == before


def test_a_change_is_still_written(agent: Agent, control: EmulatorControl) -> None:
    """The test above can fail: a run that does observe something writes."""
    assert agent.check().returncode == 0
    event = control.schedule("Reboot", ["web-1"], not_before_in=900)
    assert agent.check().returncode == 0
    before = _files(agent.state_dir)
    control.start(event)
    assert agent.check().returncode == 0
    assert _files(agent.state_dir) != before


def test_retention_prunes_in_a_run_with_work_and_keeps_what_status_and_history_promise(
    agent: Agent, pool: EmulatorControl
) -> None:
    agent.config_text = DEFAULT_CONFIG + "\n[retention]\ncleared_events = 2\nhistory_rows = 10\n"
    assert agent.check().returncode == 0
    ids = []
    for _ in range(6):
        event = pool.schedule("Freeze", ["web-1"], not_before_in=900)
        ids.append(event)
        assert agent.check().returncode == 0
        pool.remove(event)
        assert agent.check().returncode == 0
    mine = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    assert agent.check().returncode == 0
    status = agent.status()
    listed = {e["event_id"]: e["state"] for e in status["events"]}
    assert listed == {ids[-2]: "cleared", ids[-1]: "cleared", mine: "active"}
    assert status["vm"]["held_by"] == [mine]
    history = agent.history()
    assert len(history) <= 10
    assert history[-1]["event_id"] == mine or history[-1]["subject"] == "vm"
    assert not any(h["event_id"] == ids[0] for h in history), "the oldest lines were pruned"
    assert any(h["event_id"] == ids[-1] for h in history)
    # The VM still comes back once its own event clears (its record was never pruned).
    pool.remove(mine)
    assert agent.check().returncode == 0
    assert agent.status()["vm"]["in_rotation"] is True
    windows = agent.run("history", "--json", "--windows")
    assert windows.returncode == 0, windows.stderr
    assert mine in windows.stdout


def test_an_idle_check_with_many_cleared_events_reads_only_open_ones(
    agent: Agent, control: EmulatorControl
) -> None:
    """A cleared event listed again is looked up by key: its earlier history is kept and it is seen as
    reappeared, though the run loads only open events."""
    assert agent.check().returncode == 0
    event = control.schedule("Reboot", ["web-1"], event_id="AAAA-1", not_before_in=900)
    assert agent.check().returncode == 0
    control.remove(event)
    assert agent.check().returncode == 0
    control.schedule("Reboot", ["web-1"], event_id="AAAA-1", not_before_in=900)
    assert agent.check().returncode == 0
    reasons = [h["reason"] for h in agent.history() if h["event_id"] == "AAAA-1"]
    assert any(r.startswith("reappeared") for r in reasons), reasons
