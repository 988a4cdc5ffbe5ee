"""Waiting for connections before approving: ``[approval] service_ports``, "auto" by default (the
ports this VM listens on beyond loopback, except SSH and drainer's own)."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

from drainer.emulator.control import EmulatorControl
from drainer.io.connections import count_established, listening_ports
from tests.conftest import DEFAULT_CONFIG, Agent

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _row(local: str, remote: str, state: str) -> str:
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 1 1\n"


def _proc(tmp_path: Path, tcp: list[str], tcp6: list[str] = ()) -> str:  # type: ignore[assignment]
    (tmp_path / "tcp").write_text(HEADER + "".join(tcp))
    (tmp_path / "tcp6").write_text(HEADER + "".join(tcp6))
    return str(tmp_path)


def test_auto_finds_the_services_not_ssh_loopback_or_drainers_own(tmp_path: Path) -> None:
    proc = _proc(
        tmp_path,
        [
            _row("00000000:01BB", "00000000:0000", "0A"),  # 0.0.0.0:443 listening: a service
            _row("00000000:0016", "00000000:0000", "0A"),  # 0.0.0.0:22: SSH
            _row("0100007F:18EB", "00000000:0000", "0A"),  # 127.0.0.1:6379: local only
            _row("00000000:1F98", "00000000:0000", "0A"),  # 0.0.0.0:8088: drainer's probe
            _row("0400000A:1F90", "00000000:0000", "0A"),  # 10.0.0.4:8080 listening
            _row("0400000A:01BB", "0500000A:C350", "01"),  # an established client of 443
        ],
        [
            _row("00000000000000000000000001000000:2382", "0" * 32 + ":0000", "0A"),  # [::1]:9090
            _row("00000000000000000000000000000000:0050", "0" * 32 + ":0000", "0A"),  # [::]:80
            _row("0000000000000000FFFF00000100007F:0051", "0" * 32 + ":0000", "0A"),  # ::ffff:127.0.0.1:81
        ],
    )
    assert listening_ports(exclude={8088}, proc_net=proc) == {443, 8080, 80}
    assert count_established({443}, proc_net=proc) == 1
    assert count_established({8080}, proc_net=proc) == 0


def test_no_proc_net_means_unknown(tmp_path: Path) -> None:
    assert listening_ports(proc_net=str(tmp_path / "absent")) is None
    assert count_established({443}, proc_net=str(tmp_path / "absent")) is None


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net (Linux)")
def test_the_default_waits_for_a_service_connection(agent: Agent, pool: EmulatorControl) -> None:
    """With nothing configured, a client connected to a port this VM serves holds the approval."""
    assert sys.platform.startswith("linux")
    agent.config_text = DEFAULT_CONFIG.replace("enabled = false", "enabled = true\npeer_check_interval = 0")
    agent.config_text = agent.config_text.replace("service_ports = []\n", "")  # the default: "auto"
    server = socket.socket()
    server.bind(("0.0.0.0", 0))  # a service reachable from outside
    server.listen()
    client = socket.create_connection(("127.0.0.1", server.getsockname()[1]))
    accepted, _ = server.accept()
    try:
        pool.schedule("Reboot", ["web-0"], not_before_in=900)
        assert agent.check().returncode == 0
        (event,) = agent.status()["events"]
        waiting = re.match(r"waiting: (\d+) established connections", event["approval"])
        assert waiting, event["approval"]  # not approved: our client is connected
        before = int(waiting.group(1))
        client.close()
        accepted.close()
        assert agent.check().returncode == 0
        (event,) = agent.status()["events"]
        after = re.match(r"waiting: (\d+) established connections", event["approval"])
        # Approved now, or (other services on this machine) waiting for fewer connections.
        assert event["approval"] == "approved" or (after and int(after.group(1)) < before), event["approval"]
    finally:
        client.close()
        accepted.close()
        server.close()
