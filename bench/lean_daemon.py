"""Benchmark: the daemon at rest and its Preempt reaction, side by side with the floor of a Python loop
that polls the same IMDS URL with requests every second (issue 18's "lean daemon").

Both processes run at the same time against one emulator (so both see the same machine load):

- at rest, twice: before the daemon has acted (the state exists: no start-up reconcile), and after
  the Preempt trials (a drain and a restore loaded the Azure SDK, as any drain or the periodic
  reconcile does): RSS (VmRSS, the last of 1 s samples) and CPU (schedstat run time over wall time)
  of each, over ``--seconds``;
- reaction: a Preempt for this VM appears at a random moment of the poll cycle; the time until the
  first NIC write reaches the emulated ARM (median and max of ``--trials``);
- idle ``check``: ``drainer check`` with nothing to do against a one-shot ``requests`` GET, run
  alternately (median of ``--runs`` pairs).

``--drainer`` names the ``drainer`` executable to measure (another checkout's venv measures the code
before a change in the same run of this script).

    .venv/bin/python bench/lean_daemon.py [--drainer PATH] [--seconds 60] [--trials 10] [--runs 20]
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
[azure]
poll_interval = 0.1
[approval]
enabled = false
[logging]
level = "warning"
"""

LOOP = """
import sys, time, requests
s = requests.Session(); s.trust_env = False
url = sys.argv[1] + "/metadata/scheduledevents"
while True:
    answer = s.get(url, params={"api-version": "2020-07-01"}, headers={"Metadata": "true"}, timeout=5)
    answer.raise_for_status()
    time.sleep(1.0)
"""

ONESHOT = (
    "import sys, requests; s = requests.Session(); s.trust_env = False; "
    "s.get(sys.argv[1] + '/metadata/scheduledevents', params={'api-version': '2020-07-01'}, "
    "headers={'Metadata': 'true'}, timeout=5).raise_for_status()"
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


def at_rest(procs: dict[str, int], seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """RSS (MiB, the last of 1 s samples) and CPU (% of a CPU) of each process over ``seconds``."""
    cpu0 = {n: cpu_seconds(p) for n, p in procs.items()}
    wall0 = time.monotonic()
    rss = dict.fromkeys(procs, 0.0)
    while time.monotonic() - wall0 < seconds:
        time.sleep(1)
        rss = {n: rss_mib(p) for n, p in procs.items()}
    elapsed = time.monotonic() - wall0
    return rss, {n: 100 * (cpu_seconds(p) - cpu0[n]) / elapsed for n, p in procs.items()}


def wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drainer", default=str(Path(sys.executable).with_name("drainer")))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--shed",
        type=float,
        default=5.0,
        help="[daemon] shed_sdk_after for the run (default 5 s, so 'at rest' comes within the "
        "benchmark; shipped: 600 s); 0: leave it out (a drainer that has no such key)",
    )
    args = parser.parse_args()
    python = str(Path(args.drainer).with_name("python"))
    with RunningEmulator(["web-0", "web-1", "web-2"]) as emulator, tempfile.TemporaryDirectory() as tmp:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
        config = Path(tmp) / "config.toml"
        shed = f"[daemon]\nshed_sdk_after = {args.shed}\n"
        config.write_text(CONFIG.replace("[daemon]\n", shed) if args.shed else CONFIG)
        imds = emulator.vm_url("web-0")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DRAINER_CONFIG": str(config),
            "DRAINER_IMDS_ENDPOINT": imds,
            "DRAINER_ARM_ENDPOINT": emulator.url,
            "DRAINER_STATE_DIR": str(Path(tmp) / "state"),
        }
        # -- idle check first, while nothing else runs
        wall([args.drainer, "check"], env)
        checks, floors = [], []
        for _ in range(args.runs):
            checks.append(wall([args.drainer, "check"], env))
            floors.append(wall([python, "-c", ONESHOT, imds], env))
        # -- the daemon and the loop, side by side
        loop = subprocess.Popen([python, "-c", LOOP, imds], env=env, stderr=subprocess.DEVNULL)
        daemon = subprocess.Popen([args.drainer, "run"], env=env, stderr=subprocess.DEVNULL)
        try:
            stamp = Path(tmp) / "state" / "last-check"
            before = stamp.stat().st_mtime
            wait_for(lambda: stamp.stat().st_mtime > before)
            time.sleep(3)  # settle after start-up imports before measuring the steady state
            procs = {"requests loop": loop.pid, "drainer run": daemon.pid}
            rest = {"never acted": at_rest(procs, args.seconds)}
            latencies = []
            for _ in range(args.trials):
                time.sleep(random.uniform(0, 1))  # events arrive at any moment of the poll cycle
                writes_before = len(control.arm_writes())
                seen = time.time()
                event_id = control.schedule("Preempt", ["web-0"], not_before_in=30)
                wait_for(lambda n=writes_before: len(control.arm_writes()) > n)
                put = next(r for r in reversed(control.requests()) if r["method"] == "PUT")
                latencies.append(put["at"] - seen)
                control.remove(event_id)
                wait_for(lambda: "web-0-nic" in next(iter(control.membership().values())))
            time.sleep(3 + args.shed)  # the shed (a re-exec) comes after shed_sdk_after quiet seconds
            rest["after a drain"] = at_rest(procs, args.seconds)
        finally:
            for proc in (daemon, loop):
                proc.terminate()
                proc.wait(timeout=30)
    print(f"drainer: {args.drainer}")
    print(f"{'measure':<52} {'floor':>10} {'drainer':>10} {'ratio':>7}")
    for when, (rss, cpu) in rest.items():
        floor_rss, daemon_rss = rss["requests loop"], rss["drainer run"]
        print(
            f"{f'RSS at rest ({when}), MiB':<52} {floor_rss:>10.1f} {daemon_rss:>10.1f} "
            f"{daemon_rss / floor_rss:>6.2f}x"
        )
        print(
            f"{f'CPU at rest ({when}), % of a CPU':<52} {cpu['requests loop']:>10.3f} "
            f"{cpu['drainer run']:>10.3f} {cpu['drainer run'] / cpu['requests loop']:>6.2f}x"
        )
    fmed, cmed = statistics.median(floors), statistics.median(checks)
    print(
        f"{f'idle check, median of {args.runs} pairs, ms':<52} {fmed * 1000:>10.1f} {cmed * 1000:>10.1f} "
        f"{cmed / fmed:>6.2f}x"
    )
    print(
        f"Preempt -> first NIC write, {args.trials} trials, 1 s polling: median "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
