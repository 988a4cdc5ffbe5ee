"""Benchmark (issue 19): 20 VMs on the ``admin-state`` method, one load balancer whose IP-based pool
holds all 20 addresses, every VM draining at the same moment (cron-style one-shots started
together), then every VM restoring at the same moment. Each pool write is a read-modify-write of the
same pool with ``If-Match``: the VMs' writes conflict (412) and are read again.

Reports, per phase and per ``[fleet] spread_seconds``: the drains or restores that failed ("kept
changing" and any other reason), the 412s ARM answered, the pool writes made, the wall time, and
whether every address ended Down (then None again).

    .venv/bin/python bench/admin_state_fleet.py [--vms 20] [--spread 0 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[policy]
retry_max_seconds = 0
[drain]
method = "admin-state"
min_in_service = 0
[fleet]
spread_seconds = {spread}
[azure]
poll_interval = 0.2
[approval]
enabled = false
"""


def _env(emulator: RunningEmulator, home: Path, vm: str, text: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DRAINER_CONFIG": str(home / "config.toml"),
        "DRAINER_IMDS_ENDPOINT": emulator.vm_url(vm),
        "DRAINER_ARM_ENDPOINT": emulator.url,
        "DRAINER_STATE_DIR": str(home / "state"),
    }


def _all(envs: list[dict[str, str]]) -> tuple[list[tuple[int, str]], float]:
    """Run `drainer check` on every VM at once; (exit code, stderr) each, and the wall time."""
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "drainer", "check"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in processes]
    return results, time.monotonic() - started


def _summary(
    name: str, results: list[tuple[int, str]], seconds: float, control: EmulatorControl, mark: int
) -> str:
    failed = [err for code, err in results if code != 0]
    changing = [err for err in failed if "kept changing" in err]
    seen = control.requests()[mark:]
    conflicts = sum(1 for r in seen if r["status"] == 412)
    writes = sum(1 for r in seen if r["method"] == "PUT" and "/backendAddressPools/" in r["path"])
    return (
        f"{name:8} failed {len(failed):2} (kept changing: {len(changing)})  412s {conflicts:3}  "
        f"pool writes {writes:3}  {seconds:5.1f}s"
    )


def trial(vms: int, spread: float) -> list[str]:
    names = [f"web-{i}" for i in range(vms)]
    lines = []
    with RunningEmulator(names) as emulator, tempfile.TemporaryDirectory() as tmp:
        control = EmulatorControl(emulator.url)
        control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
        for name in names:
            control.add_ip_member("lb-ip", "ip-pool", name)
        envs = [_env(emulator, Path(tmp) / n, n, CONFIG.format(spread=spread)) for n in names]
        _all(envs)  # idle: identities cached, the reconcile of a new state done
        events = [control.schedule("Reboot", [n], not_before_in=900) for n in names]
        mark = len(control.requests())
        results, seconds = _all(envs)
        pool = next(iter(control.membership().values()))
        down = sum(1 for m in pool if m.endswith("(Down)"))
        lines.append(_summary("drain", results, seconds, control, mark) + f"  Down {down}/{vms}")
        for event_id in events:
            control.remove(event_id)
        mark = len(control.requests())
        results, seconds = _all(envs)
        pool = next(iter(control.membership().values()))
        back = sum(1 for m in pool if not m.endswith("(Down)"))
        lines.append(_summary("restore", results, seconds, control, mark) + f"  back {back}/{vms}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--spread", type=float, nargs="*", default=[0.0, 5.0])
    args = parser.parse_args()
    for spread in args.spread:
        print(f"{args.vms} VMs, admin-state, one IP-based pool, spread_seconds = {spread:g}")
        for line in trial(args.vms, spread):
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
