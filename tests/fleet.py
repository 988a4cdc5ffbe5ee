"""What the fleet tests share (tests/test_fleet.py and the attacks on it): a config per VM, several
agents against one emulator, runs started together, and the pool's lowest in-service count."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import DEFAULT_CONFIG, Agent
from tests.zygote import Zygote

VMS = [f"web-{i}" for i in range(5)]
APPROVING = DEFAULT_CONFIG.replace("enabled = false", "enabled = true\npeer_check_interval = 0")


def fleet_config(
    *,
    min_in_service: int | str = 1,
    max_unavailable: int = 0,
    base: str = DEFAULT_CONFIG,
    drain: str = "",
    extra: str = "",
    spread: float = 0.2,
) -> str:
    """``base`` with the floor, more ``[drain]`` lines, and ``[fleet]``: intents of 900 s, and the
    random delays (up to ``spread`` seconds, doubled at each retry after a conflict) that runs with
    ``TEST_SPREAD=1`` keep."""
    return (
        base
        + f"\n[fleet]\nclaim_seconds = 900\nspread_seconds = {spread}\n"
        + f"\n[drain]\nmin_in_service = {min_in_service}\nmax_unavailable = {max_unavailable}\n{drain}"
        + extra
    )


def fleet_agents(
    emulator: RunningEmulator, tmp: Path, names: list[str], config: str, zygote: Zygote | None = None
) -> dict[str, Agent]:
    """One agent per VM, each with its own directory. Without ``zygote``: fresh interpreters, whose
    runs really overlap when started together."""
    agents = {}
    for name in names:
        (tmp / name).mkdir()
        agents[name] = Agent(emulator=emulator, tmp=tmp / name, vm=name, config_text=config, zygote=zygote)
    return agents


def together(agents: list[Agent], *args: str, **env: str) -> list[Any]:
    """Run ``drainer ARGS`` for every agent at once; their results in order."""
    results: list[Any] = [None] * len(agents)
    barrier = threading.Barrier(len(agents))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = agents[i].run(*args, **env)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def lowest_in_service(control: EmulatorControl, pool_id: str) -> int:
    """The fewest members the pool had in service since the ``five`` fixture set it up (all five)."""
    counts = [c for _, p, c in control.stats()["timeline"] if p == pool_id.lower()]
    return int(min([len(VMS), *counts]))
