"""What drainer stores and shows (issue 12, item 8): escape sequences from IMDS never reach the terminal,
a token echoed by ARM is redacted before it is stored, the state database is private."""

from __future__ import annotations

import stat

from drainer.emulator.control import EmulatorControl
from tests.conftest import Agent
from tests.test_hardening_urls import recorder

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202etxt"


def test_status_and_history_escape_terminal_sequences(agent: Agent, pool: EmulatorControl) -> None:
    pool.schedule("Reboot", ["web-0", HOSTILE])
    assert agent.check().returncode == 0
    for command in ("status", "history"):
        done = agent.run(command)
        assert done.returncode == 0, done.stderr
        for raw in ("\x1b", "\x07", "\u202e"):
            assert raw not in done.stdout, (command, done.stdout)
    shown = agent.run("status").stdout
    if "owned" in shown:  # the value is listed: escaped, readable
        assert "\\x1b]0;owned\\x07" in shown
        assert "\\u202e" in shown


def test_an_echoed_token_is_redacted_before_it_is_stored(agent: Agent, pool: EmulatorControl) -> None:
    pool.schedule("Reboot", ["web-0"])
    with recorder(echo=True) as fake_arm:
        done = agent.check(DRAINER_ARM_ENDPOINT=f"http://127.0.0.1:{fake_arm.port}")
        tokens = [
            h["headers"]["Authorization"].split(" ", 1)[1]
            for h in fake_arm.seen
            if "Authorization" in h["headers"]
        ]
    assert done.returncode == 1, done.stderr
    assert tokens, "the fake ARM received the token (this test needs the echo)"
    token = tokens[0]
    stored = b"".join(p.read_bytes() for p in agent.state_dir.iterdir() if p.is_file())
    assert token.encode() not in stored
    status = agent.run("status")
    history = agent.run("history")
    assert token not in status.stdout + history.stdout
    assert "[redacted]" in status.stdout  # the error is kept, its secret is not
    assert token not in done.stderr


def test_the_state_database_and_the_lock_are_private(agent: Agent, pool: EmulatorControl) -> None:
    pool.schedule("Reboot", ["web-0"])
    assert agent.check().returncode == 0
    for name in ("state.db", "lock"):
        mode = stat.S_IMODE((agent.state_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    for side in agent.state_dir.glob("state.db-*"):
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
