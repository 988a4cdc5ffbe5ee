"""Claim 5 break: one damaged byte in state.db (SQLite pages carry no checksum: a flipped byte is
read back as data) makes status, history, check, restore and drain die with a traceback (exit 70)
instead of one line. The byte flipped is the digit of the stored incarnation ('2' -> 'x');
``int()`` of it raises ValueError on every read of the state. `check` does not set the database
aside either, so the VM stays drained and drainer is stuck until someone edits the file.

Run: .venv/bin/python -m pytest attacks/test_db_one_byte_traceback.py -n0 -q
"""

from __future__ import annotations

import pytest

from tests.test_truth import ok

COMMANDS = [("status",), ("status", "--json"), ("history",), ("check",), ("restore",), ("drain",)]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_one_flipped_byte_gives_a_traceback(tagged, two_pools, args):
    two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    db = tagged.state_dir / "state.db"
    assert not list(tagged.state_dir.glob("state.db-wal"))  # everything is in the main file
    data = bytearray(db.read_bytes())
    at = data.index(b"incarnation") + len(b"incarnation")
    assert chr(data[at]).isdigit()
    data[at] = ord("x")  # one byte
    db.write_bytes(bytes(data))
    done = tagged.run(*args)
    # expected: one line "drainer: ... state database is damaged ..." (exit 1), no traceback
    assert done.returncode != 70 and "Traceback" not in done.stderr, done.stderr[-1500:]
