"""Benchmark: a simulated 1,000-VM update-domain wave against an emulator enforcing ARM's documented
limits, with compressed timing.

Assumptions (stated in the output too):
- 1,000 VMs in one NIC-based pool, 5 update domains of 200; the platform (this script) schedules one
  Reboot per domain listing its 200 VMs, starts it at NotBefore or when approved, keeps it
  MAINTENANCE seconds, removes it, then goes on with the next domain.
- Time runs SCALE times faster than on Azure: NotBefore 900 s / SCALE after scheduling, each VM checks
  every 60 s / SCALE (cron), force_before_seconds 120 / SCALE; ARM's limits are scaled the same way
  (token buckets refill SCALE times faster, Microsoft.Network's 5-minute windows last 300 s / SCALE),
  so the load relative to the limits is what 1,000 real VMs would put on them. Retry-After is in
  whole seconds (as Azure's), so a throttled call waits relatively longer here.
- Each VM runs drainer's real one-shot (``runner.run_once``: IMDS, the decision core, SQLite state,
  the Azure SDK over HTTP) in a thread of one of WORKERS processes; the emulator has its own process.
  The per-process ARM rate limit ([azure] max_calls_per_second) is off: in one process it would be
  shared by hundreds of VMs. Tokens are fetched through one process-wide setting of azure-identity, so
  ARM's per-principal accounting is approximate; the subscription-wide limits are exact.
- min_in_service = 1: the shipped floor (issue 19: each drain announces an intent on its NIC, reads
  the pool and, in a random order, peers' NICs until one is seen in service; README, fleet model).
- Each VM names its NIC ([drain] nics): without it every drain, restore and reconcile lists the
  resource group's 1,000 NICs, which the emulator (one Python process on this machine) cannot serve
  for 1,000 VMs.

    .venv/bin/python bench/fleet_1000.py [--vms 1000] [--scale 4]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

N = 1000
DOMAINS = 5
SCALE = 4.0
MAINTENANCE = 8.0
WORKERS = 2


def patient(call: Any, *args: Any) -> Any:
    """A control call, retried while the loaded emulator is slow to answer."""
    for _ in range(60):
        try:
            return call(*args)
        except OSError:
            time.sleep(2)
    return call(*args)


def serve(names: list[str], port_out: Any, stop: Any) -> None:
    from drainer.emulator.server import RunningEmulator

    with RunningEmulator(names) as emulator:
        port_out.put(emulator.url)
        stop.wait()


def agents(url: str, names: list[str], scale: float, root: str, stop: Any) -> None:
    """Run drainer's one-shot for each VM every 60 s / scale, in threads, until ``stop``."""
    from drainer.app.runner import run_once
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
    from drainer.io.log import configure, get_logger

    configure(LoggingConfig(format="json", level="error"), stream=io.StringIO())
    log = get_logger()

    def one(name: str) -> None:
        config = Config(
            state_dir=str(Path(root, name)),
            imds=ImdsConfig(endpoint=f"{url}/vm/{name}", deadline=20.0, read_timeout=10.0),
            azure=AzureConfig(
                arm_endpoint=url, poll_interval=0.2, deadline=120.0, read_timeout=60, max_calls_per_second=0
            ),
            policy=PolicyConfig(
                retry_max_seconds=int(60 / scale) or 1, force_before_seconds=int(120 / scale)
            ),
            # Named NICs: no resource-group NIC list per drain, restore and reconcile (1,000 NICs each).
            drain=DrainConfig(min_in_service=1, nics=(f"{name}-nic",)),
            fleet=FleetConfig(spread_seconds=5.0),
            approval=ApprovalConfig(slot_seconds=20 / scale, peer_check_interval=30 / scale),
        )
        period = 60 / scale
        time.sleep(random.uniform(0, period))
        while not stop.is_set():
            started = time.monotonic()
            try:
                run_once(config, log)
            except Exception as exc:
                print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            stop.wait(max(0.0, period - (time.monotonic() - started)))

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=N)
    parser.add_argument("--scale", type=float, default=SCALE)
    args = parser.parse_args()
    n, scale = args.vms, args.scale
    names = [f"vm-{i:04d}" for i in range(n)]
    size = n // DOMAINS
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    port = ctx.Queue()
    server = ctx.Process(target=serve, args=(names, port, stop), daemon=True)
    server.start()
    url = port.get(timeout=120)
    from drainer.emulator.control import EmulatorControl

    control = EmulatorControl(url)
    lb = control.add_load_balancer("lb-web", pools=["web-pool"])
    pool_id = f"{lb}/backendAddressPools/web-pool".lower()
    for name in names:
        control.join(name, "lb-web", "web-pool")
    control.throttle(
        enabled=True,
        arm_read=[250, 25 * scale],
        arm_write=[200, 10 * scale],
        rp_read=[10_000, 300 / scale],
        rp_write=[1_000, 300 / scale],
    )
    with tempfile.TemporaryDirectory() as root:
        workers = [
            ctx.Process(target=agents, args=(url, names[i::WORKERS], scale, root, stop), daemon=True)
            for i in range(WORKERS)
        ]
        for w in workers:
            w.start()
        # Every VM's first run reconciles (its state is new): 1,000 NIC lists of the resource group.
        time.sleep(90 / scale + 5)
        patient(control.reset_stats)
        started = time.time()
        drained_all: list[float] = []
        for d in range(DOMAINS):
            listed = names[d * size : (d + 1) * size]
            event_id = control.schedule(  # not retried: a slow answer may still have scheduled it
                "Reboot", listed, not_before_in=900 / scale, maintenance_seconds=MAINTENANCE
            )
            scheduled = time.time()
            out_at: float | None = None
            while any(e["EventId"] == event_id for e in patient(control.state)["events"]):
                members = set(patient(control.membership).get(next(iter(patient(control.membership))), []))
                if out_at is None and not any(f"{v}-nic" in members for v in listed):
                    out_at = time.time() - scheduled
                time.sleep(1.0)
            drained_all.append(out_at if out_at is not None else float("nan"))
        deadline = time.time() + 600
        while time.time() < deadline:
            members = patient(control.membership)[next(iter(patient(control.membership)))]
            if len(members) == n:
                break
            time.sleep(1.0)
        finished = time.time() - started
        left_out = n - len(patient(control.membership)[next(iter(patient(control.membership)))])
        stats = patient(control.stats)
        approvals = patient(control.state)["approvals"]
        stop.set()
        for w in workers:
            w.join(timeout=120)
    server.join(timeout=30)
    principals = stats["principals"].values()
    counts = [c for _, p, c in stats["timeline"] if p == pool_id]
    print(f"Simulated wave: {n} VMs, {DOMAINS} domains of {size}, time x{scale:g} (ARM limits scaled alike)")
    print(f"  wave finished in {finished:.0f} s (x{scale:g}: {finished * scale / 60:.0f} min on Azure)")
    print(f"  VMs left out at the end: {left_out}")
    print(
        "  time to drain all of a domain (s, from scheduling): " + ", ".join(f"{t:.0f}" for t in drained_all)
    )
    print(f"  lowest in service: {min([n, *counts])}")
    print(f"  ARM reads {sum(p['reads'] for p in principals)}, writes {sum(p['writes'] for p in principals)}")
    print(f"  429s: {sum(p['throttled'] for p in principals)}")
    print(
        f"  approvals: {len(approvals)} for {DOMAINS} events; "
        f"sent with a listed VM in a pool: {sum(1 for a in approvals if a['in_pool'])}"
    )
    return 0 if left_out == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
