"""Benchmark: the daemon's idle cost and its reaction latency, against the emulator.

- Idle: `drainer run` polling every second with no event, for IDLE seconds: CPU% (utime+stime from
  /proc/<pid>/stat over wall time) and RSS (VmRSS, sampled every second; max and last).
- Reaction latency: the time from an event becoming visible in IMDS (the emulator's schedule call)
  to the drain's NIC write arriving at the emulated ARM, over TRIALS trials (median and max).

    .venv/bin/python bench/daemon.py [--idle 60] [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from procstat import cpu_seconds

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator

CONFIG = """
[daemon]
poll_interval = 1.0
[imds]
deadline = 5.0
[azure]
poll_interval = 0.1
[approval]
enabled = false
[logging]
level = "warning"
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    with RunningEmulator(["web-0", "web-1", "web-2"]) as emulator, tempfile.TemporaryDirectory() as tmp:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DRAINER_CONFIG": str(config),
            "DRAINER_IMDS_ENDPOINT": emulator.vm_url("web-0"),
            "DRAINER_ARM_ENDPOINT": emulator.url,
            "DRAINER_STATE_DIR": str(Path(tmp) / "state"),
        }
        daemon = subprocess.Popen(
            [sys.executable, "-m", "drainer", "run"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            wait_for((Path(tmp) / "state" / "last-check").exists)
            time.sleep(2)  # settle after start-up imports before measuring the steady state
            cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
            rss = []
            while time.monotonic() - wall0 < args.idle:
                time.sleep(1)
                rss.append(rss_mib(daemon.pid))
            cpu_pct = 100 * (cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - wall0)
            latencies = []
            for _ in range(args.trials):
                # Events arrive at any moment of the poll cycle, not in step with it.
                time.sleep(random.uniform(0, 1))
                writes_before = len(control.arm_writes())
                seen = time.time()
                event_id = control.schedule("Reboot", ["web-0"], not_before_in=900)
                wait_for(lambda n=writes_before: len(control.arm_writes()) > n)
                put = next(r for r in reversed(control.requests()) if r["method"] == "PUT")
                latencies.append(put["at"] - seen)
                control.remove(event_id)
                wait_for(lambda: "web-0-nic" in next(iter(control.membership().values())))
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    print(f"idle {args.idle:g}s at 1 s polling: CPU {cpu_pct:.2f}%, RSS max {max(rss):.1f} MiB")
    print(
        f"reaction latency (event visible -> NIC write), {args.trials} trials: "
        f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
