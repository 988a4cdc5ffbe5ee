"""Benchmark: the longest time one ``drainer check`` holds the run lock against an answer that drips.

A dripped answer sends one byte, then waits, then the next: each byte well within the read timeout,
the whole answer far beyond the deadline (a slow proxy, a middlebox, a stuck IMDS). Two cases, each
through the emulator's drip fault:

- IMDS: the scheduled events answer (padded to ``--imds-bytes``) drips, ``[imds] deadline = 3``;
- ARM: a drain's reads of the VM's NIC drip, ``[azure] deadline = 20``.

Each measured run gets a fresh emulator and state directory (warmed by one unmeasured check).

For each run: how long the lock was held (``<state_dir>/lock`` in ``/proc/locks``, sampled every
10 ms: read-only, so the probe never competes for the lock), the wall time of the run, its exit code
and its error line. The configured read timeouts are the defaults (IMDS 5 s, ARM 30 s).

``--drainer PATH`` runs the drainer package found in PATH (e.g. an export of an older commit:
``git archive <commit> drainer | tar -x -C /tmp/old``) against this tree's emulator, for a before and
after comparison. Linux only (``/proc/locks``).

    .venv/bin/python bench/deadlines.py [--runs 3] [--drainer /tmp/old]

Recorded on the shared 2-CPU machine, 3 runs per case, defaults (IMDS: 60 B at 1 B/0.8 s, deadline
3 s; ARM: NIC reads at 1 B/0.05 s, deadline 20 s), longest lock hold / longest run:

    before (ce8ba00, --drainer of its export)   IMDS 47.3 s / 48.2 s (exit 0: it waited the answer out)
                                                ARM  85.9 s / 86.5 s (exit 1)
    after (deadlines bound the whole exchange)  IMDS  3.0 s /  4.7 s (exit 1, "did not complete within
                                                                      the 3 s deadline")
                                                ARM  22.2 s / 23.2 s (exit 1; the 20 s bound the drain,
                                                     the rest is IMDS and the SDK's import, before it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[policy]
retry_max_seconds = 0
[imds]
deadline = {imds_deadline}
[azure]
poll_interval = 0.05
deadline = {arm_deadline}
[approval]
enabled = false
[fleet]
# No random wait before the drain (up to 5 s by default): the figures are the exchange's alone.
spread_seconds = 0
"""


def _lock_held(lock: Path, stop: threading.Event, spans: list[float]) -> None:
    """Sample /proc/locks until ``stop``; append the seconds between the first and the last sample
    that saw a lock on ``lock``."""
    first = last = None
    inode = None
    while not stop.wait(0.01):
        if inode is None:
            try:
                inode = lock.stat().st_ino
            except FileNotFoundError:
                continue
        held = any(
            line.split()[5].rsplit(":", 1)[-1] == str(inode)
            for line in Path("/proc/locks").read_text().splitlines()
            if "FLOCK" in line
        )
        if held:
            now = time.monotonic()
            first = now if first is None else first
            last = now
    spans.append(0.0 if first is None or last is None else last - first)


def _check(env: dict[str, str], state: Path) -> tuple[float, float, int, str]:
    """One `drainer check`: (seconds the lock was held, wall seconds, exit code, its error line)."""
    stop = threading.Event()
    spans: list[float] = []
    probe = threading.Thread(target=_lock_held, args=(state / "lock", stop, spans))
    probe.start()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "drainer", "check"],
        env=env,
        cwd=env["HOME"],  # not this tree: `-m` puts the working directory first on the path
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    stop.set()
    probe.join()
    errors = [
        json.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and json.loads(line).get("level") == "error"
    ]
    said = errors[-1].get("error", errors[-1]["event"]) if errors else ""
    return spans[0], wall, done.returncode, str(said)


def _run(case: str, args: argparse.Namespace) -> tuple[float, float, int, str]:
    """One measured check of ``case`` ("imds" or "arm"), against a fresh emulator and state."""
    with RunningEmulator(["web-0", "web-1", "web-2"]) as emulator, tempfile.TemporaryDirectory() as tmp:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", ["web-0", "web-1", "web-2"])
        config = Path(tmp) / "config.toml"
        config.write_text(CONFIG.format(imds_deadline=args.imds_deadline, arm_deadline=args.arm_deadline))
        state = Path(tmp) / "state"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": tmp,
            "PYTHONPATH": args.drainer,
            "DRAINER_IMDS_ENDPOINT": emulator.vm_url("web-0"),
            "DRAINER_ARM_ENDPOINT": emulator.url,
            "DRAINER_STATE_DIR": str(state),
            "DRAINER_CONFIG": str(config),
        }
        # The first run caches the VM's identity and reconciles with ARM: not measured.
        warm = subprocess.run(
            [sys.executable, "-m", "drainer", "check"], env=env, cwd=tmp, capture_output=True, check=False
        )
        if warm.returncode != 0:
            raise SystemExit(warm.stderr.decode())
        if case == "imds":
            control.set_document(b'{"DocumentIncarnation": 1, "Events": []}'.ljust(args.imds_bytes))
            control.drip("/metadata/scheduledevents", args.imds_drip, method="GET", count=1_000)
        else:  # a Reboot for web-0: the check drains, and every read of its NIC drips
            control.schedule("Reboot", ["web-0"], not_before_in=900)
            control.drip("networkInterfaces/web-0-nic$", args.arm_drip, method="GET", count=1_000)
        try:
            return _check(env, state)
        finally:
            control.clear_faults()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="checks per case (the longest is reported)")
    parser.add_argument("--drainer", default=str(ROOT), help="directory holding the drainer package to run")
    parser.add_argument("--imds-drip", type=float, default=0.8, help="IMDS: seconds between two bytes")
    parser.add_argument(
        "--imds-bytes", type=int, default=60, help="IMDS: the scheduled events answer, padded"
    )
    parser.add_argument("--imds-deadline", type=float, default=3.0)
    parser.add_argument("--arm-drip", type=float, default=0.05, help="ARM: seconds between two bytes")
    parser.add_argument("--arm-deadline", type=float, default=20.0)
    args = parser.parse_args()
    print(
        f"drainer from {args.drainer}; {args.runs} run(s) per case, {os.cpu_count()} CPUs, "
        "default read timeouts (IMDS 5 s, ARM 30 s)"
    )
    cases = {
        "imds": f"IMDS events, {args.imds_bytes} B, 1 B/{args.imds_drip:g} s, "
        f"deadline {args.imds_deadline:g} s",
        "arm": f"ARM NIC reads, 1 B/{args.arm_drip:g} s, deadline {args.arm_deadline:g} s",
    }
    print(f"{'case':<52} {'longest lock hold':>18} {'longest run':>12}  exit  error")
    for case, name in cases.items():
        results = [_run(case, args) for _ in range(args.runs)]
        hold = max(r[0] for r in results)
        wall = max(r[1] for r in results)
        codes = ",".join(sorted({str(r[2]) for r in results}))
        print(f"{name:<52} {hold:>17.1f}s {wall:>11.1f}s  {codes:>4}  {results[-1][3][:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
