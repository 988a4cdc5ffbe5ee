"""Benchmark: how long one VM is out of rotation for the same maintenance, under three policies.

The emulator plays a Reboot for web-0 with compressed timing: NotBefore NOTICE seconds after it is
scheduled (15 minutes on Azure), and MAINTENANCE seconds of impact once it starts (Azure starts it at
NotBefore, or at once when approved). While web-0 is in its pool, a client keeps one connection to the
service port open at any time, each lasting CONNECTION seconds. The agent runs `run_once` every
POLL seconds (what `drainer check` from a fast timer, or the daemon, does).

Policies:
  1. drain at once, never approve        (approval disabled)
  2. drain near NotBefore, then approve  (lead time; no wait for connections: what existing tools do)
  3. drainer's default                   (drain at once; approve once connections are gone)

Reported per policy: time out of rotation (left rotation -> back), when the maintenance ended
(from scheduling), and connections still open when the maintenance started (they would be cut).

    .venv/bin/python bench/maintenance_window.py
"""

from __future__ import annotations

import io
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from drainer.config import ApprovalConfig, AzureConfig, Config, ImdsConfig, LoggingConfig, PolicyConfig
from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from drainer.log import configure, get_logger
from drainer.runner import run_once
from drainer.state import StateStore

NOTICE = 8.0
MAINTENANCE = 2.0
CONNECTION = 1.5
POLL = 0.25
LEAD = 3.0


class Traffic:
    """Keeps one connection to the service port open while the VM is in its pool."""

    def __init__(self, control: EmulatorControl) -> None:
        self.control = control
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.open: list[tuple[socket.socket, socket.socket, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def in_pool(self) -> bool:
        return any("web-0-nic" in members for members in self.control.membership().values())

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            for conn in [c for c in self.open if now - c[2] >= CONNECTION]:
                conn[0].close()
                conn[1].close()
                self.open.remove(conn)
            if not self.open and self.in_pool():
                client = socket.create_connection(("127.0.0.1", self.port))
                accepted, _ = self.server.accept()
                self.open.append((client, accepted, now))
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for client, accepted, _ in self.open:
            client.close()
            accepted.close()
        self.server.close()


def play(name: str, policy: PolicyConfig, approval: ApprovalConfig) -> dict[str, Any]:
    configure(LoggingConfig(format="json", level="warning"), stream=io.StringIO())
    log = get_logger()
    with RunningEmulator(["web-0", "web-1", "web-2"]) as emulator, tempfile.TemporaryDirectory() as state_dir:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
        traffic = Traffic(control)
        if approval.service_ports == (0,):
            approval = approval._replace(service_ports=(traffic.port,))
        config = Config(
            state_dir=state_dir,
            imds=ImdsConfig(endpoint=emulator.vm_url("web-0"), deadline=5.0),
            azure=AzureConfig(arm_endpoint=emulator.url, poll_interval=0.05, deadline=30.0),
            policy=policy,
            approval=approval,
        )
        run_once(config, log)  # identity cached, idle
        scheduled = time.monotonic()
        event_id = control.schedule(
            "Reboot", ["web-0"], not_before_in=NOTICE, maintenance_seconds=MAINTENANCE
        )
        cut: int | None = None
        ended: float | None = None
        while time.monotonic() - scheduled < NOTICE + MAINTENANCE + 10:
            run_once(config, log)
            events = {e["EventId"]: e for e in control.state()["events"]}
            if cut is None and events.get(event_id, {}).get("EventStatus") == "Started":
                cut = len(traffic.open)
            if ended is None and event_id not in events:
                ended = time.monotonic() - scheduled
            store = StateStore(state_dir)
            try:
                record = store.load().events.get(event_id.casefold())
            finally:
                store.close()
            if record is not None and record.returned_at is not None:
                break
            time.sleep(POLL)
        traffic.close()
    assert record is not None and record.left_rotation_at is not None and record.returned_at is not None
    return {
        "policy": name,
        "out": (record.returned_at - record.left_rotation_at).total_seconds(),
        "ended": ended,
        "cut": cut,
        "approved": record.approved_at is not None,
    }


def main() -> int:
    results = [
        play("1. drain at once, never approve", PolicyConfig(), ApprovalConfig(enabled=False)),
        play(
            "2. drain near NotBefore + approve",
            PolicyConfig(lead_time_seconds=int(LEAD)),
            ApprovalConfig(near_seconds=3600),
        ),
        play("3. drainer default", PolicyConfig(), ApprovalConfig(service_ports=(0,), drain_timeout=30)),
    ]
    print(
        f"compressed maintenance: notice {NOTICE:g}s, impact {MAINTENANCE:g}s, connections last "
        f"{CONNECTION:g}s, agent every {POLL:g}s, lead time (policy 2) {LEAD:g}s"
    )
    print(f"{'policy':<36} {'out of rotation':>16} {'maintenance done':>17} {'connections cut':>16}")
    for r in results:
        print(f"{r['policy']:<36} {r['out']:>15.2f}s {r['ended']:>16.2f}s {r['cut']!s:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
