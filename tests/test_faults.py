"""The fault matrix: every fault the platform can throw at a drain, against the emulator.

For each: no crash (no traceback), a clear log line, the documented exit code, state intact (the VM
is either still fully in its pools or fully out, never half), no token in the logs, and convergence
(drained, then restored to exactly its pools) once the fault clears. tests/FAULTS.md is the table of
these results; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest

from drainer.emulator.control import EmulatorControl
from tests.conftest import DEFAULT_CONFIG, Agent, log_records

NIC = "networkInterfaces/web-0-nic"
FAST = DEFAULT_CONFIG.replace("deadline = 20.0", "deadline = 3.0")


class Fault(NamedTuple):
    name: str
    inject: Callable[[EmulatorControl, Agent], dict[str, str]]  # returns extra env for the faulty run
    exit_code: int
    says: str  # a substring of the log that names the problem
    during: str  # the VM's drain state after the faulty run


def _fault(**fields: object) -> Callable[[EmulatorControl, Agent], dict[str, str]]:
    def inject(control: EmulatorControl, agent: Agent) -> dict[str, str]:
        control.fault(count=100_000, **fields)
        return {}

    return inject


def _document(body: str) -> Callable[[EmulatorControl, Agent], dict[str, str]]:
    def inject(control: EmulatorControl, agent: Agent) -> dict[str, str]:
        control.set_document(body)
        return {}

    return inject


def _imds_down(control: EmulatorControl, agent: Agent) -> dict[str, str]:
    return {"DRAINER_IMDS_ENDPOINT": "http://127.0.0.1:9/vm/web-0"}


def _lro_failed(control: EmulatorControl, agent: Agent) -> dict[str, str]:
    control.fail_next_lro(100_000)
    return {}


def _concurrent_writer(control: EmulatorControl, agent: Agent) -> dict[str, str]:
    agent.config_text = FAST + "\n[drain]\nmin_in_service = 0\n"  # the drain's read is the NIC's first
    control.concurrent_change("web-0-nic", tag=("changed-by", "someone"))
    return {}


ARM_ERROR = '{"error": {"code": "%s", "message": "%s"}}'
MATRIX = [
    Fault("imds-down", _imds_down, 1, "IMDS unreachable", "in_rotation"),
    Fault("imds-slow", _fault(match="scheduledevents", status=200, delay=2.0), 1, "IMDS", "in_rotation"),
    Fault("imds-500", _fault(match="scheduledevents", status=500), 1, "HTTP 500", "in_rotation"),
    Fault(
        "imds-429", _fault(match="scheduledevents", status=429, retry_after="1"), 1, "HTTP 429", "in_rotation"
    ),
    Fault("imds-410", _fault(match="scheduledevents", status=410), 1, "HTTP 410", "in_rotation"),
    Fault("imds-404", _fault(match="scheduledevents", status=404), 1, "HTTP 404", "in_rotation"),
    Fault(
        "imds-malformed-json",
        _document('{"DocumentIncarnation": 3, "Events": ['),
        1,
        "not JSON",
        "in_rotation",
    ),
    Fault(
        "imds-wrong-types",
        _document('{"DocumentIncarnation": [], "Events": 5}'),
        1,
        "malformed",
        "in_rotation",
    ),
    Fault(
        "imds-huge-body",
        _document('{"Events": [], "x": "' + "y" * 1_100_000 + '"}'),
        1,
        "larger than",
        "in_rotation",
    ),
    Fault("identity-500", _fault(match="identity/oauth2/token", status=500), 1, "drain failed", "draining"),
    Fault(
        "arm-401",
        _fault(
            match=NIC,
            method="PUT",
            status=401,
            body=ARM_ERROR % ("InvalidAuthenticationToken", "The access token is invalid."),
        ),
        1,
        "401",
        "draining",
    ),
    Fault(
        "arm-403",
        _fault(
            match=NIC,
            method="PUT",
            status=403,
            body=ARM_ERROR % ("AuthorizationFailed", "does not have authorization"),
        ),
        1,
        "AuthorizationFailed",
        "draining",
    ),
    Fault(
        "arm-404",
        _fault(
            match=NIC,
            method="GET",
            status=404,
            body=ARM_ERROR % ("ResourceNotFound", "The Resource was not found."),
        ),
        1,
        "ResourceNotFound",
        "draining",
    ),
    Fault(
        "arm-409",
        _fault(
            match=NIC,
            method="PUT",
            status=409,
            body=ARM_ERROR % ("AnotherOperationInProgress", "Another operation is in progress"),
        ),
        1,
        "AnotherOperationInProgress",
        "draining",
    ),
    Fault("arm-412-concurrent-writer", _concurrent_writer, 0, "412", "drained"),
    Fault(
        "arm-429-retry-after",
        _fault(
            match=NIC,
            method="PUT",
            status=429,
            retry_after="1",
            body=ARM_ERROR % ("TooManyRequests", "throttled"),
        ),
        1,
        "deadline",
        "draining",
    ),
    Fault(
        "arm-500",
        _fault(match=NIC, method="PUT", status=500, body=ARM_ERROR % ("InternalServerError", "boom")),
        1,
        "write NIC",
        "draining",
    ),
    Fault("arm-lro-failed", _lro_failed, 1, "the operation failed", "draining"),
    Fault("arm-connection-reset", _fault(match=NIC, method="PUT", reset=True), 1, "write NIC", "draining"),
]


@pytest.fixture
def pool(control: EmulatorControl) -> EmulatorControl:
    control.add_load_balancer("lb-web", pools=["web-pool", "api-pool"])
    for vm in ("web-0", "web-1", "web-2"):
        control.join(vm, "lb-web", "web-pool")
        control.join(vm, "lb-web", "api-pool")
    return control


def _pools(control: EmulatorControl) -> list[str]:
    nic = control.nic("web-0-nic")
    return sorted(
        r["id"]
        for r in nic["properties"]["ipConfigurations"][0]["properties"]["loadBalancerBackendAddressPools"]
    )


@pytest.mark.parametrize("fault", MATRIX, ids=lambda f: f.name)
def test_fault(agent: Agent, pool: EmulatorControl, fault: Fault) -> None:
    agent.config_text = FAST
    assert agent.check().returncode == 0  # identity cached before the fault
    original = _pools(pool)
    event_id = pool.schedule("Reboot", ["web-0"], not_before_in=900)
    env = fault.inject(pool, agent)
    done = agent.check(**env)
    text = done.stderr
    assert "Traceback" not in text
    assert done.returncode == fault.exit_code, text[-3000:]
    assert fault.says in text, text[-3000:]
    if fault.exit_code:
        errors = [r for r in log_records(text) if r["level"] == "error"] or [text.strip().splitlines()[-1]]
        assert errors  # one clear line at least
    assert "emulator." not in text  # no bearer token ever reaches a log
    status = agent.status()  # the state is intact and readable
    assert status["vm"]["drain_state"] == fault.during
    assert _pools(pool) in (original, [])  # never half out
    # The fault clears: the next run converges.
    pool.clear_faults()
    pool.clear_document()
    pool.fail_next_lro(0)
    done = agent.check()
    assert done.returncode == 0, done.stderr[-3000:]
    assert agent.status()["vm"]["drain_state"] == "drained"
    assert _pools(pool) == []
    pool.remove(event_id)
    assert agent.check().returncode == 0
    assert _pools(pool) == original
    assert agent.status()["vm"]["removed"] == []


def test_the_table_in_faults_md_lists_every_case() -> None:
    from tests.conftest import ROOT

    table = (ROOT / "tests" / "FAULTS.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    assert rows == {f.name for f in MATRIX}
