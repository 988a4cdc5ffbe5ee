"""Damaged disk state gives one line, never a traceback (issue 20), through the CLI against the emulator.
Each case failed before (a traceback, exit 70 or "unexpected error") and passes now:

- a state database with a malformed page, under ``status``, ``history``, ``fleet`` and ``check``
  (``check`` sets it aside and rebuilds it from Azure, in the same run);
- a full disk: the file-size limit (``RLIMIT_FSIZE`` = 0 in the child, ``SIGXFSZ`` ignored, so every
  write fails with EFBIG: works unprivileged, everywhere) and, where a tmpfs can be mounted, a real
  ENOSPC; nothing is left half-written and the next run converges;
- a symlink at a file drainer writes: refused, named, exit 1 (README, "Exit codes"), its target
  untouched.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import ENTRY, Agent
from tests.test_truth import API_POOL, WEB_POOL, ok, pools_of, tagged, two_pools

__all__ = ["tagged", "two_pools"]  # fixtures re-used from tests/test_truth.py

TABLES = ("meta", "events", "vm", "ledger", "absent", "history")


def one_line(done: subprocess.CompletedProcess[str], code: int = 1) -> None:
    """Failed with ``code``, saying so in one ``drainer: ...`` line (or one JSON log record)."""
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines, "a failure must say why"
    assert all(line.startswith(("drainer: ", "{")) for line in lines), done.stderr[-3000:]


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr, done.stderr[-3000:]


# -- a corrupt database ------------------------------------------------------------------------------


def drained_then_back(agent: Agent, control: EmulatorControl) -> None:
    """A state with something in every table: an event, history, a ledger; then checkpointed."""
    event_id = control.schedule("Reboot", ["web-0"])
    ok(agent.check())
    control.fault(match="/loadBalancers/lb-web", status=404, count=1, method="GET")
    control.remove(event_id)
    agent.check()  # a restore that waits for a 404: the absent table has a row
    control.schedule("Freeze", ["web-0"])
    ok(agent.check())  # out again: the ledger has rows
    ok(agent.run("status"))


def corrupt_table(db: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage (the WAL checkpointed away first)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    with db.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xab" * page_size)


@pytest.mark.parametrize("table", TABLES)
def test_a_corrupt_database_gives_status_and_history_one_line(
    tagged: Agent, two_pools: EmulatorControl, table: str
) -> None:
    drained_then_back(tagged, two_pools)
    corrupt_table(tagged.state_dir / "state.db", table)
    for args in (["status"], ["status", "--json"], ["history"], ["history", "--json", "--windows"]):
        done = tagged.run(*args)
        if args[0] == "status":
            no_traceback(done)  # status exits 1 whenever the health is failing
        else:
            assert done.returncode in (0, 1)
        if done.returncode == 1 and not done.stdout:
            one_line(done)
            assert "state.db" in done.stderr and "damaged" in done.stderr, done.stderr
        else:
            assert "Traceback" not in done.stderr


def test_fleet_does_not_read_a_corrupt_database(tagged: Agent, two_pools: EmulatorControl) -> None:
    drained_then_back(tagged, two_pools)
    corrupt_table(tagged.state_dir / "state.db", "history")
    done = tagged.run("fleet", "--json")
    ok(done)


@pytest.mark.parametrize("table", TABLES)
def test_check_sets_a_corrupt_database_aside_and_converges(
    tagged: Agent, two_pools: EmulatorControl, table: str
) -> None:
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    ok(tagged.run("status"))
    corrupt_table(tagged.state_dir / "state.db", table)
    two_pools.remove(event_id)
    for _ in range(2):
        done = tagged.check()
        no_traceback(done)
        if pools_of(two_pools, "web-0-nic"):
            break
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert list(tagged.state_dir.glob("state.db.corrupt-*")), sorted(
        p.name for p in tagged.state_dir.iterdir()
    )
    ok(tagged.check())


# -- a full disk ----------------------------------------------------------------------------------


def _no_room() -> None:  # in the child, before exec: every write to a file fails (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def full_disk(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    """``drainer ARGS`` in a fresh interpreter that cannot write a byte to any file."""
    return subprocess.run(
        [sys.executable, str(ENTRY), *args],
        env={**agent.env(), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_no_room,  # a resource limit and a signal disposition, nothing else
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_full_disk_gives_one_line_and_the_next_run_converges(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    ok(tagged.check())  # the state exists (identity, boot), the lock file holds a pid
    lock = (tagged.state_dir / "lock").read_bytes()
    event_id = two_pools.schedule("Reboot", ["web-0"])
    for args in (["check"], ["drain"], ["restore"]):
        done = full_disk(tagged, *args)
        one_line(done)
        assert "No space" in done.stderr or "too large" in done.stderr or "disk" in done.stderr, done.stderr
    for args in (["status"], ["history"]):
        no_traceback(full_disk(tagged, *args))
    assert leftovers(tagged.state_dir) == []
    assert (tagged.state_dir / "lock").read_bytes() == lock  # not truncated: nothing half-written
    with contextlib.closing(sqlite3.connect(tagged.state_dir / "state.db")) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ok(tagged.check())  # room again: the drain goes ahead
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (CI may not allow mounting one: then the test is skipped)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem up to its last byte."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)
    return filler


def test_enospc_on_a_real_full_filesystem(
    small_tmpfs: Path, tagged: Agent, two_pools: EmulatorControl
) -> None:
    tagged.extra_env["DRAINER_STATE_DIR"] = str(small_tmpfs / "state")
    ok(tagged.check())
    event_id = two_pools.schedule("Reboot", ["web-0"])
    filler = fill(small_tmpfs)
    for args in (["check"], ["drain"]):
        done = tagged.run(*args)
        no_traceback(done)
        if done.returncode:
            one_line(done)
    no_traceback(tagged.run("status"))
    assert leftovers(small_tmpfs / "state") == []
    filler.unlink()
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == []
    two_pools.remove(event_id)
    ok(tagged.run("restore"))
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


# -- a symlink at a file drainer writes ------------------------------------------------------------


@pytest.mark.parametrize(
    "planted", ["last-check", "lock", "state.db", "state.db-wal", "record.key", "record.drain"]
)
def test_a_symlink_at_a_file_drainer_writes_is_refused_and_named(
    tagged: Agent, two_pools: EmulatorControl, planted: str
) -> None:
    ok(tagged.check())  # the state dir and its files exist
    target = tagged.tmp / "precious"
    target.write_bytes(b"root's precious file\n")
    where = {
        "record.key": tagged.tmp / "state-record" / "record.key",
        "record.drain": tagged.tmp / "state-record" / "record.drain",
    }.get(planted, tagged.state_dir / planted)
    where.parent.mkdir(mode=0o700, exist_ok=True)
    where.unlink(missing_ok=True)
    where.symlink_to(target)
    two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check()
    one_line(done)
    assert f"{where}" in done.stderr and "symlink" in done.stderr, done.stderr[-3000:]
    assert target.read_bytes() == b"root's precious file\n"
    assert where.is_symlink()
    if planted in ("last-check", "record.key", "record.drain"):
        assert pools_of(two_pools, "web-0-nic") == []  # refused, and the drain went ahead all the same


@pytest.mark.parametrize("planted", ["failing.json", "last-failure.json", "metrics.json"])
def test_a_symlink_at_a_status_or_metrics_file_is_never_followed(
    tagged: Agent, two_pools: EmulatorControl, planted: str
) -> None:
    textfile = tagged.tmp / "drainer.prom"
    tagged.config_text += f'\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    ok(tagged.check())
    target = tagged.tmp / "precious"
    target.write_text('{"error": "root\'s precious file", "at": "x", "consecutive": 9}\n')
    before = target.read_bytes()
    (tagged.state_dir / planted).unlink(missing_ok=True)
    (tagged.state_dir / planted).symlink_to(target)
    two_pools.fault(match="/metadata/scheduledevents", status=500, count=50)
    no_traceback(tagged.check())  # fails (IMDS), writes failing.json
    two_pools.clear_faults()
    no_traceback(tagged.check())  # succeeds, ends the streak (last-failure.json)
    status = tagged.run("status")
    no_traceback(status)
    assert "precious" not in status.stdout
    assert target.read_bytes() == before
