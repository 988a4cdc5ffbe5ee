"""Benchmark: the fleet as one system. Real drainer processes (one per VM, each with its own IMDS view
under /vm/<name>, state dir and managed identity) against one emulator that enforces ARM's documented
throttling (token buckets per principal, Microsoft.Network's 5-minute windows; drainer/emulator/
throttle.py) and records every change of a pool's membership.

1. The race: five VMs of one pool, each with its own Reboot at the same moment, min_in_service = 1,
   cron-style one-shots started together; TRIALS trials, with and without 200 ms of ARM latency, with
   the fleet's lease and (as the baseline) without it. Reports the lowest in-service count, the
   trials that went below the floor, ARM reads/writes per VM and 429s.
2. The update-domain wave: N = 20 VMs in one pool, 5 update domains; the platform (this script)
   schedules one Reboot per domain listing its 4 VMs, starts it at NotBefore (or at once when
   approved), keeps it MAINTENANCE seconds, removes it, then goes on with the next domain. Daemons,
   lease, min_in_service = 1, max_unavailable = 4. Run with early approval and without. Reports the
   lowest in-service count, seconds below the floor (and whether forced), approvals per event,
   approvals sent while a listed VM was still in a pool, ARM reads/writes per VM, 429s and the time
   to finish the wave.

Timing is compressed: NotBefore NOTICE seconds after scheduling (15 minutes on Azure),
force_before_seconds FORCE (120 s by default).

    .venv/bin/python bench/fleet.py [--trials 20] [--skip-wave] [--skip-race]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator

ROOT = Path(__file__).resolve().parent.parent
NOTICE = 40.0
FORCE = 10
MAINTENANCE = 4.0
POOL = "web-pool"


def config(lease: str, *, approve: bool, min_in_service: int, max_unavailable: int) -> str:
    return f"""
[policy]
retry_max_seconds = 4
force_before_seconds = {FORCE}
[drain]
min_in_service = {min_in_service}
max_unavailable = {max_unavailable}
[azure]
poll_interval = 0.2
[fleet]
lease = "{lease}"
spread_seconds = 2.0
[approval]
enabled = {"true" if approve else "false"}
slot_seconds = 5
peer_check_interval = 2
near_seconds = 5
[daemon]
poll_interval = 1.0
[logging]
format = "json"
"""


def env(emulator: RunningEmulator, vm: str, home: Path, config_text: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(config_text)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "DRAINER_CONFIG": str(home / "config.toml"),
        "DRAINER_IMDS_ENDPOINT": emulator.vm_url(vm),
        "DRAINER_ARM_ENDPOINT": emulator.url,
        "DRAINER_STATE_DIR": str(home / "state"),
    }


def pool_of(emulator: RunningEmulator, names: list[str]) -> tuple[EmulatorControl, str]:
    control = EmulatorControl(emulator.url)
    lb = control.add_load_balancer("lb-web", pools=[POOL])
    for name in names:
        control.join(name, "lb-web", POOL)
    control.throttle(enabled=True)  # the documented limits
    control.reset_stats()
    return control, f"{lb}/backendAddressPools/{POOL}".lower()


def in_service_series(control: EmulatorControl, pool_id: str, start: int) -> list[tuple[float, int]]:
    return [(t, c) for t, p, c in control.stats()["timeline"] if p == pool_id] or [(time.time(), start)]


def seconds_below(series: list[tuple[float, int]], floor: int, end: float) -> float:
    total = 0.0
    for (t, count), (t_next, _) in zip(series, [*series[1:], (end, 0)], strict=True):
        if count < floor:
            total += t_next - t
    return total


def arm_figures(control: EmulatorControl, names: list[str]) -> dict[str, Any]:
    principals = control.stats()["principals"]
    reads = [principals.get(n, {}).get("reads", 0) for n in names]
    writes = [principals.get(n, {}).get("writes", 0) for n in names]
    return {
        "reads/VM": f"{statistics.mean(reads):.1f} (max {max(reads)})",
        "writes/VM": f"{statistics.mean(writes):.1f} (max {max(writes)})",
        "429s": sum(p.get("throttled", 0) for p in principals.values()),
    }


# -- 1. the race ---------------------------------------------------------------------------------


def race(trials: int, latency: float, use_lease: bool) -> dict[str, Any]:
    names = [f"web-{i}" for i in range(5)]
    lowest: list[int] = []
    figures: list[dict[str, Any]] = []
    for _ in range(trials):
        with RunningEmulator(names) as emulator, tempfile.TemporaryDirectory() as tmp:
            control, pool_id = pool_of(emulator, names)
            control.throttle(latency=latency)
            lease = control.add_asg("drainer-lease") if use_lease else ""
            text = config(lease, approve=False, min_in_service=1, max_unavailable=0)
            text = text.replace("spread_seconds = 2.0", "spread_seconds = 0")  # the worst case
            for name in names:
                control.schedule("Reboot", [name], not_before_in=900)
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "drainer", "check"],
                    env=env(emulator, n, Path(tmp) / n, text),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for n in names
            ]
            for proc in procs:
                proc.wait(timeout=120)
            series = in_service_series(control, pool_id, len(names))
            lowest.append(min(len(names), *(c for _, c in series)))
            figures.append(arm_figures(control, names))
    return {
        "lease": "yes" if use_lease else "no (baseline)",
        "latency": f"{latency * 1000:.0f} ms",
        "trials": trials,
        "lowest in service": min(lowest),
        "trials below floor": sum(1 for n in lowest if n < 1),
        "reads/VM": figures[-1]["reads/VM"],
        "writes/VM": figures[-1]["writes/VM"],
        "429s": sum(f["429s"] for f in figures),
    }


# -- 2. the update-domain wave -------------------------------------------------------------------


def wave(approve: bool, n: int = 20, domains: int = 5) -> dict[str, Any]:
    names = [f"web-{i:02d}" for i in range(n)]
    size = n // domains
    with RunningEmulator(names) as emulator, tempfile.TemporaryDirectory() as tmp:
        control, pool_id = pool_of(emulator, names)
        lease = control.add_asg("drainer-lease")
        text = config(lease, approve=approve, min_in_service=1, max_unavailable=size)
        daemons = [
            subprocess.Popen(
                [sys.executable, "-m", "drainer", "run"],
                env=env(emulator, name, Path(tmp) / name, text),
                stdout=subprocess.DEVNULL,
                stderr=Path(tmp, f"{name}.log").open("w"),  # noqa: SIM115 - closed with the process
            )
            for name in names
        ]
        try:
            time.sleep(3)  # the daemons start (a bench, not a test: waiting is what it measures)
            control.reset_stats()
            started = time.time()
            event_ids = []
            for d in range(domains):
                listed = names[d * size : (d + 1) * size]
                event_ids.append(
                    control.schedule("Reboot", listed, not_before_in=NOTICE, maintenance_seconds=MAINTENANCE)
                )
                while any(e["EventId"] == event_ids[-1] for e in control.state()["events"]):
                    time.sleep(0.2)
            while len(control.membership()[next(iter(control.membership()))]) < n:
                if time.time() - started > 600:
                    break
                time.sleep(0.2)
            finished = time.time() - started
        finally:
            for proc in daemons:
                proc.terminate()
            for proc in daemons:
                proc.wait(timeout=30)
        series = in_service_series(control, pool_id, n)
        approvals = control.state()["approvals"]
        forced = sum(Path(tmp, f"{name}.log").read_text().count("below the pool's floor") for name in names)
        return {
            "early approval": "yes" if approve else "no",
            "lowest in service": min(n, *(c for _, c in series)),
            "s below floor": f"{seconds_below(series, 1, time.time()):.1f}"
            + (f" (forced drains: {forced})" if forced else ""),
            "approvals/event": f"{len(approvals) / domains:.1f}",
            "approved with a listed VM in a pool": sum(1 for a in approvals if a["in_pool"]),
            **arm_figures(control, names),
            "wave s": f"{finished:.1f}",
        }


def table(rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[k]).ljust(w) for k, w in zip(keys, widths, strict=True)))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--skip-race", action="store_true")
    parser.add_argument("--skip-wave", action="store_true")
    args = parser.parse_args()
    if not args.skip_race:
        rows = [race(args.trials, latency, lease) for latency in (0.0, 0.2) for lease in (True, False)]
        print(f"The race: 5 VMs, 5 Reboots at once, min_in_service = 1, {args.trials} trials each")
        table(rows)
    if not args.skip_wave:
        print(
            f"The update-domain wave: 20 VMs, 5 domains, NotBefore {NOTICE:g}s, maintenance {MAINTENANCE:g}s"
        )
        table([wave(True), wave(False)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
