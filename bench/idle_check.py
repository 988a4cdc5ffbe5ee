"""Benchmark: the idle ``drainer check`` (no event) against the floor of a bare requests GET.

Starts the emulator on a free loopback port, warms the state directory with one run, then runs both
commands alternately N times and reports the median and mean wall time and the peak RSS of each
(per child, from wait4), and their ratio. The target is drainer within 1.3x of the floor.

    ./dev bench [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drainer.emulator.server import RunningEmulator

FLOOR = (
    "import requests; s = requests.Session(); s.trust_env = False; "
    "s.get('{url}/metadata/scheduledevents', params={{'api-version': '2020-07-01'}}, "
    "headers={{'Metadata': 'true'}}, timeout=5).raise_for_status()"
)


def _measure(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of argv."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        assert child.stderr is not None
        raise SystemExit(f"{argv} failed: {child.stderr.read().decode()}")
    if child.stderr is not None:
        child.stderr.close()
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    drainer = shutil.which("drainer") or str(Path(sys.executable).with_name("drainer"))
    with RunningEmulator(["web-0"]) as emulator, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text("")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DRAINER_IMDS_ENDPOINT": emulator.url,
            "DRAINER_ARM_ENDPOINT": emulator.url,  # the first run reconciles: never the real ARM
            "DRAINER_STATE_DIR": str(Path(tmp) / "state"),
            "DRAINER_CONFIG": str(config),
        }
        commands = {
            "floor: python -c 'requests GET'": [sys.executable, "-c", FLOOR.format(url=emulator.url)],
            "drainer check (idle)": [drainer, "check"],
        }
        for argv in commands.values():  # warm caches and the state directory
            _measure(argv, env)
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                samples[name].append(_measure(argv, env))
    print(f"{args.runs} runs each, interleaved, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'command':<34} {'median ms':>10} {'mean ms':>9} {'peak RSS MiB':>13}")
    medians = {}
    for name, values in samples.items():
        walls = [v[0] * 1000 for v in values]
        rss = max(v[1] for v in values) / 1024
        medians[name] = statistics.median(walls)
        print(f"{name:<34} {medians[name]:>10.1f} {statistics.mean(walls):>9.1f} {rss:>13.1f}")
    floor, ours = medians.values()
    print(f"ratio (median wall): {ours / floor:.2f}x (target <= 1.30x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
