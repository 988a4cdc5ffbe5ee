"""Claim 5 break (beyond the one-byte flip in test_db_one_byte_traceback.py): damaged disk state that
is read with json.loads gives a traceback (RecursionError, exit 70) instead of one line:

- record.drain (the drain counter, beside the key) holding "[[[[..."  -> check / restore /
  config check; a drained VM is never restored while it stays so;
- <state_dir>/failing.json or last-failure.json                       -> status;
- <state_dir>/metrics.json (with [metrics] textfile)                  -> check;
- a JSON text column of state.db (vm.held_by, meta 'vm', events.resources) -> status, history, check.
Other damage to these files ({{{, [], wrong types, NUL bytes, empty) gives one line, as claimed.

Run: .venv/bin/python -m pytest attacks/test_damaged_state_tracebacks.py -n0 -q
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_truth import CONFIG, ok

DEEP = "[" * 100000


def one_line(done) -> None:
    assert done.returncode != 70 and "Traceback" not in done.stderr, done.stderr[-800:]


@pytest.mark.parametrize("args", [("check",), ("restore",), ("config", "check")], ids=" ".join)
def test_drain_counter(tagged, two_pools, args):
    event = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    two_pools.remove(event)
    (tagged.tmp / "state-record" / "record.drain").write_text(DEEP)
    one_line(tagged.run(*args))


@pytest.mark.parametrize(
    ("name", "args"), [("failing.json", "status"), ("last-failure.json", "status"), ("metrics.json", "check")]
)
def test_side_files(tagged, two_pools, tmp_path, name, args):
    tagged.config_text = CONFIG + f'\n[metrics]\nenabled = true\ntextfile = "{tmp_path}/drainer.prom"\n'
    ok(tagged.check())
    (tagged.state_dir / name).write_text(DEEP)
    (tagged.state_dir / name).chmod(0o600)
    one_line(tagged.run(args))


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("update vm set held_by=?", "status"),
        ("update vm set held_by=?", "history"),
        ("update vm set held_by=?", "check"),
        ("update meta set value=? where key='vm'", "status"),
        ("update meta set value=? where key='vm'", "check"),
        ("update events set resources=?", "status"),
        ("update events set resources=?", "history"),
        ("update events set resources=?", "check"),
    ],
)
def test_json_columns(tagged, two_pools, sql, args):
    two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    with sqlite3.connect(tagged.state_dir / "state.db") as db:
        db.execute(sql, (DEEP,))
    one_line(tagged.run(args))
