"""Benchmark: ARM requests per drain and per restore, and the wall time of a drain, against the
emulator through the real azure-mgmt-network / azure-identity clients.

Topology: lb-web/web-pool with three VMs, one NIC each (the common case). Each trial is a fresh state
directory: the first drain includes NIC discovery, later drains use the cached NIC ids.

``--event`` (issue 19) measures ARM per VM per event instead: a resource group of 120 NICs (20 VMs in
lb-web/web-pool, 100 others), one Reboot listing an update domain of 4 of the pool's VMs, each of
them running `drainer check` once per round until the event has come and gone and all 4 are back;
early approval on, with the fleet's lease ("coordination on") and without it. Reported per VM (the
mean over the 4): ARM reads (every GET: operation polls and the SDK's final GETs included), writes
(PUT/PATCH/DELETE), lists of the resource group's NICs, subscription-wide lists and the bytes ARM
answered. Then a held VM (min_in_service not met): the reads of each retry.

    .venv/bin/python bench/arm_drain.py [--trials 5] [--event]
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
from typing import Any

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
            kind = "poll" if "/operations/" in path else path.rsplit("/providers/", 1)[1].split("/")[1]
            counts[f"{r['method']} {kind}"] += 1
        elif "identity" in path:
            counts["GET token (IMDS)"] += 1
    return counts


EVENT_CONFIG = """
[imds]
deadline = 5.0
[azure]
poll_interval = 0.05
deadline = 30.0
[policy]
retry_max_seconds = 0
[drain]
min_in_service = {min_in_service}
[fleet]
lease = "{lease}"
spread_seconds = 0
[approval]
enabled = true
slot_seconds = 5
peer_check_interval = 5
"""
POOL_VMS = [f"web-{i}" for i in range(20)]
OTHERS = [f"app-{i}" for i in range(100)]  # 20 + 100 = 120 NICs in the resource group
LISTED = POOL_VMS[:4]  # one update domain


def _costs(requests: list[dict[str, Any]], vm: str) -> Counter[str]:
    """One VM's ARM requests: reads of resources, the SDK's long-running-operation GETs (operation
    polls and the final GET of the written resource), writes, resource-group NIC lists,
    subscription-wide lists and the bytes ARM answered."""
    counts: Counter[str] = Counter()
    written: set[str] = set()  # resources PUT whose final GET has not come yet
    for r in requests:
        path = str(r["path"])
        if r.get("principal") != vm or not path.startswith("/subscriptions/"):
            continue
        counts["bytes"] += int(r.get("bytes") or 0)
        lowered = path.rstrip("/").lower()
        if r["method"] != "GET":
            counts["writes"] += 1
            written.add(lowered)
            continue
        if "/operations/" in lowered or lowered in written:
            counts["lro"] += 1
            written.discard(lowered)
            continue
        counts["reads"] += 1
        if lowered.endswith("/microsoft.network/networkinterfaces"):
            counts["rg NIC lists" if "/resourcegroups/" in lowered else "subscription lists"] += 1
        elif lowered.endswith("/microsoft.network/loadbalancers") and "/resourcegroups/" not in lowered:
            counts["subscription lists"] += 1
    return counts


def _agent_env(emulator: RunningEmulator, home: Path, vm: str, text: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return {
        "PATH": os.environ.get("PATH", ""),
        "DRAINER_CONFIG": str(home / "config.toml"),
        "DRAINER_IMDS_ENDPOINT": emulator.vm_url(vm),
        "DRAINER_ARM_ENDPOINT": emulator.url,
        "DRAINER_STATE_DIR": str(home / "state"),
    }


def _run(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "drainer", "check"], env=env, capture_output=True, check=False)


def event_costs(*, lease: bool) -> dict[str, float]:
    """ARM per VM for one event listing LISTED (see the module's docstring)."""
    with RunningEmulator(POOL_VMS + OTHERS) as emulator, tempfile.TemporaryDirectory() as tmp:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", POOL_VMS)
        lease_id = control.add_asg("drainer-lease") if lease else ""
        text = EVENT_CONFIG.format(lease=lease_id, min_in_service=1)
        envs = {vm: _agent_env(emulator, Path(tmp) / vm, vm, text) for vm in LISTED}
        for env in envs.values():
            _run(env)  # idle: caches the identity (no ARM)
        mark = len(control.requests())
        control.schedule("Reboot", LISTED, not_before_in=900, maintenance_seconds=1, linger_seconds=1)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for env in envs.values():
                _run(env)
            members = next(iter(control.membership().values()))
            if not control.state()["events"] and all(f"{vm}-nic" in members for vm in LISTED):
                break
        else:
            raise SystemExit("the event did not come and go within 10 minutes")
        seen = control.requests()[mark:]
        per_vm = [_costs(seen, vm) for vm in LISTED]
        keys = ("reads", "lro", "writes", "rg NIC lists", "subscription lists", "bytes")
        return {k: statistics.mean(c[k] for c in per_vm) for k in keys}


def held_retry_costs(retries: int = 3) -> float:
    """ARM reads per retry of a drain held by the floor (min_in_service above the pool's size)."""
    with RunningEmulator(POOL_VMS + OTHERS) as emulator, tempfile.TemporaryDirectory() as tmp:
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", POOL_VMS)
        env = _agent_env(
            emulator, Path(tmp) / "web-0", "web-0", EVENT_CONFIG.format(lease="", min_in_service=99)
        )
        _run(env)
        control.schedule("Reboot", ["web-0"], not_before_in=900)
        _run(env)  # the first try (held)
        mark = len(control.requests())
        for _ in range(retries):
            _run(env)
        return _costs(control.requests()[mark:], "web-0")["reads"] / retries


def events_main() -> int:
    rows = [
        ("with the lease (coordination on)", event_costs(lease=True)),
        ("without a lease", event_costs(lease=False)),
    ]
    print(
        f"ARM per VM per event: Reboot listing {len(LISTED)} VMs, "
        f"{len(POOL_VMS) + len(OTHERS)} NICs in the group"
    )
    print(
        f"{'':34} {'reads':>6} {'LRO GETs':>8} {'writes':>6} {'RG NIC lists':>12} "
        f"{'sub. lists':>10} {'KB':>8}"
    )
    for name, row in rows:
        print(
            f"{name:34} {row['reads']:6.1f} {row['lro']:8.1f} {row['writes']:6.1f} "
            f"{row['rg NIC lists']:12.1f} "
            f"{row['subscription lists']:10.1f} {row['bytes'] / 1024:8.1f}"
        )
    print("reads: GETs of resources and lists; LRO GETs: operation polls and the SDK's final GET after a PUT")
    print(f"held drain: {held_retry_costs():.1f} ARM reads per retry")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll", type=float, default=1.0, help="[azure] poll_interval (default 1.0)")
    parser.add_argument("--event", action="store_true", help="ARM per VM per event (issue 19)")
    args = parser.parse_args()
    if args.event:
        return events_main()
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
