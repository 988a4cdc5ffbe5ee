"""``drainer fleet --pool``: a full id or a short name (``web-pool``, ``lb-web/web-pool``,
``group/lb/pool``) resolved among the load balancers of this VM's subscription; a pool that does not
exist, or a name that fits several, is refused with one line naming what exists (exit 2)."""

from __future__ import annotations

import json
import subprocess

import pytest

from drainer.app.fleetview import match_pool
from drainer.emulator.control import EmulatorControl
from tests.conftest import Agent

GROUP = "/subscriptions/8d10da13-8125-4ba9-a717-bf7490507b3d/resourceGroups/rg-drainer"
WEB = f"{GROUP}/providers/Microsoft.Network/loadBalancers/lb-web/backendAddressPools/web-pool"


def _refusal(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("drainer: --pool: ")
    return line


@pytest.mark.parametrize(
    "name", ["web-pool", "lb-web/web-pool", "rg-drainer/lb-web/web-pool", "LB-WEB/Web-Pool", WEB]
)
def test_a_pool_by_name_or_id(agent: Agent, pool: EmulatorControl, name: str) -> None:
    done = agent.run("fleet", "--json", "--pool", name)
    assert done.returncode == 0, done.stderr
    (view,) = json.loads(done.stdout)["pools"]
    assert view["pool"] == WEB.lower()
    assert view["in_service"] == 3


def test_an_unknown_pool_is_refused_naming_what_exists(agent: Agent, pool: EmulatorControl) -> None:
    pool.add_load_balancer("lb-api", pools=["api-pool"])
    line = _refusal(agent.run("fleet", "--pool", "web-pol"))
    assert "no backend pool 'web-pol'" in line
    assert "(did you mean web-pool?)" in line
    assert "pools there: lb-api/api-pool, lb-web/web-pool" in line
    # A full id that does not exist: it used to print "0 of 0 in service" and exit 0.
    line = _refusal(agent.run("fleet", "--pool", WEB.replace("web-pool", "gone-pool")))
    assert "pools there: lb-api/api-pool, lb-web/web-pool" in line
    assert pool.arm_writes() == []


def test_a_name_of_several_pools_is_refused_naming_them(agent: Agent, pool: EmulatorControl) -> None:
    pool.add_load_balancer("lb-api", pools=["web-pool"], resource_group="rg-net")
    line = _refusal(agent.run("fleet", "--pool", "web-pool"))
    assert "'web-pool' names 2 pools: rg-drainer/lb-web/web-pool, rg-net/lb-api/web-pool" in line
    done = agent.run("fleet", "--pool", "lb-api/web-pool")
    assert done.returncode == 0, done.stderr
    assert "rg-net/lb-api/web-pool: 0 of 0 in service" in done.stdout


@pytest.mark.parametrize(
    ("wanted", "found"),
    [
        ("web-pool", [WEB]),
        ("lb-web/web-pool", [WEB]),
        ("rg-drainer/lb-web/web-pool", [WEB]),
        ("other/lb-web/web-pool", []),
        ("lb-x/web-pool", []),
        ("web", []),
        ("a/b/c/d", []),
        ("lb-web//web-pool", []),
        (WEB.upper(), [WEB]),
        (WEB + "/", [WEB]),
    ],
)
def test_match_pool(wanted: str, found: list[str]) -> None:
    assert match_pool(wanted, [WEB, WEB.replace("lb-web", "lb-api").replace("web-pool", "api-pool")]) == found
