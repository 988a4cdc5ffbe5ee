"""Benchmark: the fleet as one system. Real drainer processes (one per VM, each with its own IMDS view
under /vm/<name>, state dir and managed identity) against one emulator that enforces ARM's documented
throttling (token buckets per principal, Microsoft.Network's 5-minute windows; drainer/emulator/
throttle.py) and records every change of a pool's membership.

1. The race: 5 and 20 VMs of one pool, each with its own Reboot at the same moment,
   min_in_service = 1, spread_seconds = 0 (the worst case), the shipped floor (nothing the operator
   creates); ARM latency 0, 100 and 300 ms per request; cron-style one-shots started together, and
   daemons (`drainer run`, polling every second) told at the same moment. TRIALS trials each.
   Reports the lowest in-service count, the trials that went below the floor, how many VMs were out
   at the end, ARM reads/writes per VM and 429s.
2. The update-domain wave: N = 20 VMs in one pool, 5 update domains; the platform (this script)
   schedules one Reboot per domain listing its 4 VMs, starts it at NotBefore (or at once when
   approved), keeps it MAINTENANCE seconds, removes it, then goes on with the next domain. Daemons,
   min_in_service = 1, max_unavailable = 4. Run with early approval and without. Reports the
   lowest in-service count, seconds below the floor (and whether forced), approvals per event,
   approvals sent while a listed VM was still in a pool, ARM reads/writes per VM, 429s and the time
   to finish the wave.

Timing is compressed: NotBefore NOTICE seconds after scheduling (15 minutes on Azure),
force_before_seconds FORCE (120 s by default).

    .venv/bin/python bench/fleet.py [--trials 10] [--sizes 5,20] [--latencies 0,100,300]
        [--modes cron,daemon] [--skip-wave] [--skip-race]
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


def config(*, approve: bool, min_in_service: int, max_unavailable: int) -> str:
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


def _start(emulator: RunningEmulator, names: list[str], tmp: str, text: str, command: str) -> list[Any]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "drainer", command],
            env=env(emulator, n, Path(tmp) / n, text),
            stdout=subprocess.DEVNULL,
            stderr=(Path(tmp) / n / f"{command}.log").open("a"),
        )
        for n in names
    ]


def _settled(control: EmulatorControl, pool_id: str, quiet: float, limit: float) -> None:
    """Wait until the pool's membership has changed and then not for ``quiet`` seconds, or for
    ``limit`` seconds."""
    started = time.time()
    while time.time() - started < limit:
        changes = [t for t, p, _ in control.stats()["timeline"] if p == pool_id]
        if changes and time.time() - max(changes) >= quiet:
            return
        time.sleep(0.5)


def race(size: int, latency: float, mode: str, trials: int) -> dict[str, Any]:
    names = [f"web-{i:02d}" for i in range(size)]
    lowest: list[int] = []
    out_at_end: list[int] = []
    figures: list[dict[str, Any]] = []
    seconds: list[float] = []
    for _ in range(trials):
        with RunningEmulator(names) as emulator, tempfile.TemporaryDirectory() as tmp:
            control, pool_id = pool_of(emulator, names)
            text = config(approve=False, min_in_service=1, max_unavailable=0)
            text = text.replace("spread_seconds = 2.0", "spread_seconds = 0")  # the worst case
            daemons: list[Any] = []
            if mode == "daemon":
                daemons = _start(emulator, names, tmp, text, "run")
                until = time.time() + 300
                while time.time() < until and not all(
                    (Path(tmp) / n / "state" / "state.db").exists() for n in names
                ):
                    time.sleep(0.5)  # every daemon has made its first check
                control.reset_stats()
            control.throttle(latency=latency)
            started = time.time()
            for name in names:
                control.schedule("Reboot", [name], not_before_in=900)
            try:
                if mode == "cron":
                    for proc in _start(emulator, names, tmp, text, "check"):
                        proc.wait(timeout=600)
                else:
                    _settled(control, pool_id, quiet=10.0, limit=180.0)
            finally:
                for proc in daemons:
                    proc.terminate()
                for proc in daemons:
                    proc.wait(timeout=60)
            seconds.append(time.time() - started)
            series = in_service_series(control, pool_id, size)
            lowest.append(min(size, *(c for _, c in series)))
            out_at_end.append(size - series[-1][1])
            figures.append(arm_figures(control, names))
    return {
        "VMs": size,
        "ARM latency": f"{latency * 1000:.0f} ms",
        "mode": mode,
        "trials": trials,
        "lowest in service": min(lowest),
        "trials below floor": sum(1 for n in lowest if n < 1),
        "VMs out at the end": f"{min(out_at_end)}-{max(out_at_end)}",
        "reads/VM": figures[-1]["reads/VM"],
        "writes/VM": figures[-1]["writes/VM"],
        "429s": sum(f["429s"] for f in figures),
        "s/trial": f"{statistics.median(seconds):.1f}",
    }


# -- 2. the update-domain wave -------------------------------------------------------------------


def wave(approve: bool, n: int = 20, domains: int = 5) -> dict[str, Any]:
    names = [f"web-{i:02d}" for i in range(n)]
    size = n // domains
    with RunningEmulator(names) as emulator, tempfile.TemporaryDirectory() as tmp:
        control, pool_id = pool_of(emulator, names)
        text = config(approve=approve, min_in_service=1, max_unavailable=size)
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
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--sizes", default="5,20")
    parser.add_argument("--latencies", default="0,100,300", help="milliseconds")
    parser.add_argument("--modes", default="cron,daemon")
    parser.add_argument("--skip-race", action="store_true")
    parser.add_argument("--skip-wave", action="store_true")
    args = parser.parse_args()
    if not args.skip_race:
        rows = []
        for size in (int(n) for n in args.sizes.split(",")):
            for mode in args.modes.split(","):
                for ms in (float(n) for n in args.latencies.split(",")):
                    rows.append(race(size, ms / 1000, mode, args.trials))
                    print(rows[-1], flush=True)
        print(f"The race: N VMs, N Reboots at once, min_in_service = 1, {args.trials} trials each")
        table(rows)
    if not args.skip_wave:
        print(
            f"The update-domain wave: 20 VMs, 5 domains, NotBefore {NOTICE:g}s, maintenance {MAINTENANCE:g}s"
        )
        table([wave(True), wave(False)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
