"""Benchmark: one VM's maintenance window for the same Reboot, under four policies, with Azure's
proportions compressed by SCALE.

Microsoft's rough timeline of a typical maintenance (Scheduled Events for Linux VMs, "High level
overview"): Scheduled to approval timeout 15 minutes, impact 7 seconds, Started to removed from the
Events array 10 minutes; "while the event is still in Started state, there may be another impact of a
shorter duration". Played here at 1/SCALE: notice 900 s, impact 7 s, the event lingering 600 s after
the impact; the second-impact variant adds a 3 s impact 120 s after the first. Client connections to
the service port last 60 s each (one open whenever the VM is in its pool); the agent runs every 5 s
(all figures in Azure seconds, divided by SCALE when played). While the VM is inside an impact the agent
does not run (the VM is down).

Policies:
  1. drain at once, never approve        (approval disabled; back when the event clears)
  2. drain near NotBefore, then approve  (lead time 60 s; no wait for connections: what existing tools do)
  3. drainer, restore_when = cleared     (drain at once; approve once connections are gone)
  4. drainer, restore_when = recovered   (as 3; back once rebooted and the gate held for 60 s)

Reported per policy, in Azure seconds (the played time times SCALE): time out of rotation,
time in rotation while impacted (serving while the VM is down), and connections open when an impact
began (cut).

    .venv/bin/python bench/maintenance_window.py
"""

from __future__ import annotations

import io
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from drainer.app.runner import Seams, run_once
from drainer.config import (
    ApprovalConfig,
    AzureConfig,
    Config,
    DrainConfig,
    FleetConfig,
    ImdsConfig,
    LoggingConfig,
    PolicyConfig,
)
from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from drainer.io.log import configure, get_logger

SCALE = 50.0  # Azure seconds per played second
NOTICE = 900.0
IMPACT = 7.0
LINGER = 600.0
SECOND_AFTER = 120.0
SECOND_IMPACT = 3.0
CONNECTION = 60.0
POLL = 5.0
LEAD = 60.0
GRACE = 60.0
TICK = 0.01  # the traffic thread's sampling period (played seconds)


def played(azure_seconds: float) -> float:
    return azure_seconds / SCALE


class Traffic:
    """Keeps one connection to the service port open while the VM is in its pool, and samples, every
    TICK, whether the VM is in its pool and whether it is inside an impact."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.model = emulator.model
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.open: list[tuple[socket.socket, socket.socket, float]] = []
        self.out = 0.0
        self.serving_impacted = 0.0
        self.cut = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def in_pool(self) -> bool:
        return any("web-0-nic" in members for members in self.model.arm.membership().values())

    def impacted(self) -> bool:
        return "web-0" in self.model.impacted()

    def _run(self) -> None:
        last = time.monotonic()
        was_impacted = False
        while not self.stop.is_set():
            now = time.monotonic()
            elapsed, last = now - last, now
            in_pool, impacted = self.in_pool(), self.impacted()
            if impacted and not was_impacted:
                self.cut += len(self.open)
            if impacted:
                # The VM is down: its connections die with it.
                self._close(self.open)
            was_impacted = impacted
            if not in_pool:
                self.out += elapsed
            elif impacted:
                self.serving_impacted += elapsed
            self._close([c for c in self.open if now - c[2] >= played(CONNECTION)])
            if not self.open and in_pool and not impacted:
                client = socket.create_connection(("127.0.0.1", self.port))
                accepted, _ = self.server.accept()
                self.open.append((client, accepted, now))
            time.sleep(TICK)

    def _close(self, conns: list[tuple[socket.socket, socket.socket, float]]) -> None:
        for conn in list(conns):
            conn[0].close()
            conn[1].close()
            self.open.remove(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self._close(self.open)
        self.server.close()


def play(name: str, policy: PolicyConfig, approval: ApprovalConfig, *, second: bool) -> dict[str, Any]:
    configure(LoggingConfig(format="json", level="warning"), stream=io.StringIO())
    log = get_logger()
    with RunningEmulator(["web-0", "web-1", "web-2"]) as emulator, tempfile.TemporaryDirectory() as state_dir:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
        boot_file = Path(state_dir) / "boot_id"
        control.boot_id_file("web-0", str(boot_file))
        seams = Seams(boot_id_path=str(boot_file))
        config = Config(
            state_dir=state_dir,
            drain=DrainConfig(record_key=f"{state_dir}/record/record.key"),  # gone with the directory
            imds=ImdsConfig(endpoint=emulator.vm_url("web-0"), deadline=5.0),
            azure=AzureConfig(arm_endpoint=emulator.url, poll_interval=0.05, deadline=30.0),
            # drainer's spread before a drain or restore (5 s on Azure), at the benchmark's pace
            fleet=FleetConfig(spread_seconds=played(5)),
            policy=policy,
            approval=approval,
        )
        run_once(config, log, seams)  # identity cached, idle
        traffic = Traffic(emulator)
        if approval.service_ports == (0,):  # 0: the benchmark's own service port
            config = config._replace(approval=approval._replace(service_ports=(traffic.port,)))
        traffic.out = 0.0  # count from the notice on
        scheduled = time.monotonic()
        extra: dict[str, Any] = {}
        if second:
            extra = {
                "second_impact_after": played(SECOND_AFTER),
                "second_impact_seconds": played(SECOND_IMPACT),
            }
        event_id = control.schedule(
            "Reboot",
            ["web-0"],
            not_before_in=played(NOTICE),
            maintenance_seconds=played(IMPACT),
            linger_seconds=played(LINGER),
            **extra,
        )
        gone_at: float | None = None
        limit = played(NOTICE + IMPACT + SECOND_AFTER + LINGER) + 20
        while time.monotonic() - scheduled < limit:
            if not traffic.impacted():  # a VM inside its impact runs nothing
                run_once(config, log, seams)
            listed = any(e["EventId"] == event_id for e in control.state()["events"])
            if gone_at is None and not listed:
                gone_at = time.monotonic() - scheduled
            if gone_at is not None and traffic.in_pool():
                break
            time.sleep(played(POLL))
        traffic.close()
    return {
        "policy": name,
        "out": traffic.out * SCALE,
        "serving_impacted": traffic.serving_impacted * SCALE,
        "cut": traffic.cut,
        "ended": None if gone_at is None else gone_at * SCALE,
    }


def policies() -> list[tuple[str, PolicyConfig, ApprovalConfig]]:
    recovered = MappingProxyType({**PolicyConfig().restore_when, "Reboot": "recovered"})
    # drainer's defaults in Azure seconds, at the benchmark's pace: force_before_seconds 120,
    # near_seconds 60 (nothing is approved that close to NotBefore), slot_seconds 20.
    policy = PolicyConfig(force_before_seconds=max(1, round(played(120))))
    approval = ApprovalConfig(
        service_ports=(0,), drain_timeout=played(600), near_seconds=played(60), slot_seconds=played(20)
    )
    return [
        ("1. drain at once, never approve", policy, ApprovalConfig(enabled=False)),
        (
            "2. drain near NotBefore + approve",
            policy._replace(lead_time_seconds=max(1, round(played(LEAD)))),
            ApprovalConfig(near_seconds=0),
        ),
        ("3. drainer, restore_when=cleared", policy, approval),
        (
            "4. drainer, restore_when=recovered",
            policy._replace(restore_when=recovered, recovered_grace_seconds=max(1, round(played(GRACE)))),
            approval,
        ),
    ]


def main() -> int:
    print(
        f"Reboot at 1/{SCALE:g} of Azure's pace (figures in Azure seconds): notice {NOTICE:g}s, impact "
        f"{IMPACT:g}s, lingering {LINGER:g}s after it; second-impact variant: {SECOND_IMPACT:g}s, "
        f"{SECOND_AFTER:g}s after the first; connections last {CONNECTION:g}s; agent every {POLL:g}s"
    )
    for second in (False, True):
        print()
        print("with a second impact" if second else "one impact")
        print(f"{'policy':<36} {'out of rotation':>16} {'serving impacted':>17} {'connections cut':>16}")
        for name, policy, approval in policies():
            r = play(name, policy, approval, second=second)
            print(f"{r['policy']:<36} {r['out']:>15.0f}s {r['serving_impacted']:>16.1f}s {r['cut']!s:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
