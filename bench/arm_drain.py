"""Benchmark: ARM requests per drain and per restore, and the wall time of a drain, against the
emulator through the real azure-mgmt-network / azure-identity clients.

Topology: lb-web/web-pool with three VMs, one NIC each (the common case). Each trial is a fresh state
directory: the first drain includes NIC discovery (one list), later drains use the cached NIC ids.

    .venv/bin/python bench/arm_drain.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator

CONFIG = "[imds]\ndeadline = 5.0\n[azure]\npoll_interval = {poll}\ndeadline = 30.0\n"


def _check(env: dict[str, str]) -> tuple[float, float]:
    """Run `drainer check`; return (wall seconds, seconds of the action as the agent logged them)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "drainer", "check"], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    action = [
        json.loads(line)["seconds"]
        for line in done.stderr.splitlines()
        if line.startswith("{") and json.loads(line)["event"].endswith("succeeded")
    ]
    return wall, action[0] if action else 0.0


def _arm_requests(control: EmulatorControl, since: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for r in control.requests()[since:]:
        path = r["path"]
        if path.startswith("/subscriptions/"):
            kind = "poll" if "/operations/" in path else path.rsplit("/providers/Microsoft.Network/", 1)[1]
            kind = kind.split("/")[0] if kind != "poll" else kind
            counts[f"{r['method']} {kind}"] += 1
        elif "identity" in path:
            counts["GET token (IMDS)"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll", type=float, default=1.0, help="[azure] poll_interval (default 1.0)")
    args = parser.parse_args()
    drains, restores, walls, actions, drain2 = [], [], [], [], []
    for _ in range(args.trials):
        with RunningEmulator(["web-0", "web-1", "web-2"]) as emulator, tempfile.TemporaryDirectory() as tmp:
            control = EmulatorControl(emulator.url)
            control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
            config = Path(tmp) / "config.toml"
            config.write_text(CONFIG.format(poll=args.poll))
            env = {
                "PATH": os.environ.get("PATH", ""),
                "DRAINER_CONFIG": str(config),
                "DRAINER_IMDS_ENDPOINT": emulator.vm_url("web-0"),
                "DRAINER_ARM_ENDPOINT": emulator.url,
                "DRAINER_STATE_DIR": str(Path(tmp) / "state"),
            }
            _check(env)  # idle: caches the VM identity
            mark = len(control.requests())
            event_id = control.schedule("Reboot", ["web-0"])
            wall, action = _check(env)
            walls.append(wall)
            actions.append(action)
            drains.append(_arm_requests(control, mark))
            mark = len(control.requests())
            control.remove(event_id)
            _check(env)
            restores.append(_arm_requests(control, mark))
            mark = len(control.requests())
            event_id = control.schedule("Reboot", ["web-0"])
            _check(env)
            drain2.append(_arm_requests(control, mark))

    def show(name: str, samples: list[Counter[str]]) -> None:
        total = sum(samples[0].values())
        print(f"{name}: {total} requests  " + ", ".join(f"{k} x{v}" for k, v in sorted(samples[0].items())))

    print(f"{args.trials} trials, poll_interval {args.poll:g}s, emulator LRO answers InProgress once")
    show("first drain (with NIC discovery)", drains)
    show("restore", restores)
    show("later drain (NIC ids cached)", drain2)
    print(
        f"drain action: median {statistics.median(actions):.3f}s, max {max(actions):.3f}s; "
        f"whole `drainer check` with the drain: median {statistics.median(walls):.3f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
