"""A property-based state machine against the emulator: the real runner (in-process), the real
azure-mgmt-network and azure-identity clients, random events for this VM and others, ARM faults
(412 from a concurrent writer, failed operations, 500s), an operator adding pools meanwhile, and
crashes at random step boundaries. Invariants, checked against the emulator's own NIC after every step:

- no pool is ever added to the NIC that drainer did not remove (or an operator did not add);
- while no event has listed this VM, its NIC is never touched;
- approvals only ever go to events that list this VM, and never before its drain's write;
- once no event lists the VM and the faults stop, it is back in exactly its pools within three runs.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from drainer.app.runner import Seams, run_once
from drainer.base.errors import DrainerError
from drainer.config import ApprovalConfig, AzureConfig, Config, ImdsConfig, LoggingConfig
from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from drainer.io.log import configure, get_logger

POINTS = [
    "decided",
    "saved",
    "before-drain",
    "nic-recorded",
    "nic-written",
    "recorded-drain",
    "before-approve",
    "after-approve",
    "before-restore",
    "nic-restored",
    "recorded-restore",
]


class Crash(BaseException):
    """Stands for SIGKILL at a step boundary (nothing after it runs; not an Exception)."""


class EmulatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.emulator = RunningEmulator(["web-0", "web-1", "web-2"])
        self.control = EmulatorControl(self.emulator.url)
        self.control.add_load_balancer("lb-web", pools=["pool-a", "pool-b", "pool-c"])
        for vm in ("web-0", "web-1", "web-2"):
            self.control.join(vm, "lb-web", "pool-a")
            self.control.join(vm, "lb-web", "pool-b")
        self.tmp = tempfile.TemporaryDirectory()
        self.config = Config(
            state_dir=f"{self.tmp.name}/state",  # its record key beside it, in the same directory
            imds=ImdsConfig(endpoint=self.emulator.vm_url("web-0"), deadline=2.0, read_timeout=1.0),
            azure=AzureConfig(arm_endpoint=self.emulator.url, poll_interval=0.02, deadline=5.0),
            approval=ApprovalConfig(near_seconds=0),
        )
        configure(LoggingConfig(format="json", level="error"), stream=io.StringIO())
        self.log = get_logger()
        self.allowed = set(self.pools())
        self.listed_ever = False
        self.mine: set[str] = set()

    def teardown(self) -> None:
        self.emulator.stop()
        self.tmp.cleanup()

    def pools(self) -> list[str]:
        nic = self.control.nic("web-0-nic")
        refs = nic["properties"]["ipConfigurations"][0]["properties"]["loadBalancerBackendAddressPools"]
        return sorted(r["id"] for r in refs)

    def run(self, crash_at: str | None = None) -> None:
        def checkpoint(name: str) -> None:
            if name == crash_at:
                raise Crash(name)

        with contextlib.suppress(Crash, DrainerError):
            run_once(self.config, self.log, Seams(checkpoint=checkpoint))

    # -- the platform, the operator, the faults ------------------------------------------------

    @rule(
        mine=st.booleans(), others=st.booleans(), event_type=st.sampled_from(["Reboot", "Redeploy", "Freeze"])
    )
    def schedule(self, mine: bool, others: bool, event_type: str) -> None:
        resources = (["web-0"] if mine else []) + (["web-1"] if others or not mine else [])
        event_id = self.control.schedule(event_type, resources, not_before_in=900)
        if mine:
            self.listed_ever = True
            self.mine.add(event_id)

    @precondition(lambda self: bool(self.control.state()["events"]))
    @rule(data=st.data(), complete=st.booleans())
    def platform_moves(self, data: st.DataObject, complete: bool) -> None:
        events = sorted(e["EventId"] for e in self.control.state()["events"])
        event_id = data.draw(st.sampled_from(events))
        if complete:
            self.control.remove(event_id)
        else:
            self.control.start(event_id)

    @rule()
    def operator_adds_pool_c(self) -> None:
        self.control._call("POST", "arm/join", {"vm": "web-0", "lb": "lb-web", "pool": "pool-c"})
        self.allowed.add(next(p for p in self.control.membership() if p.endswith("/pool-c")))

    @rule(kind=st.sampled_from(["412", "lro", "500"]))
    def arm_fault(self, kind: str) -> None:
        if kind == "412":
            self.control.concurrent_change("web-0-nic", tag=("touched", "yes"))
        elif kind == "lro":
            self.control.fail_next_lro(1)
        else:
            self.control.fault(match="networkInterfaces/web-0-nic", method="PUT", status=500, count=20)

    @rule()
    def faults_stop(self) -> None:
        self.control.clear_faults()
        self.control.fail_next_lro(0)

    # -- drainer ---------------------------------------------------------------------------------

    @rule()
    def check(self) -> None:
        self.run()

    @rule(point=st.sampled_from(POINTS))
    def crash(self, point: str) -> None:
        self.run(crash_at=point)

    @rule()
    def settle(self) -> None:
        present = {e["EventId"] for e in self.control.state()["events"]}
        for event_id in self.mine & present:
            self.control.remove(event_id)
        self.mine.clear()
        self.faults_stop()
        for _ in range(3):
            self.run()
        assert set(self.pools()) == self.allowed
        event(f"NIC written {min(len(self.control.arm_writes()), 3)}+ times before settling")

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def nothing_added_that_was_not_there(self) -> None:
        assert set(self.pools()) <= self.allowed

    @invariant()
    def untouched_until_an_event_lists_this_vm(self) -> None:
        if not self.listed_ever:
            assert set(self.pools()) == self.allowed
            assert self.control.arm_writes() == []

    @invariant()
    def approvals_only_for_this_vm_after_its_write(self) -> None:
        approvals: list[dict[str, Any]] = self.control.state()["approvals"]
        puts = [r["at"] for r in self.control.requests() if r["method"] == "PUT" and r["status"] == 200]
        for approval in approvals:
            assert approval["vm"] == "web-0"
            assert puts and puts[0] <= approval["at"]


# Every step is real HTTP: a sixth of the profile's examples (25 in CI, 500 with HYPOTHESIS_PROFILE=long).
EmulatorMachine.TestCase.settings = settings(
    max_examples=max(10, settings.default.max_examples // 6), stateful_step_count=20, deadline=None
)
TestEmulatorMachine = EmulatorMachine.TestCase
