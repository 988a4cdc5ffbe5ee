"""``drainer demo``: a realistic maintenance played against the built-in emulator, as a timeline.

Three VMs sit behind one Azure Load Balancer (pool ``web-pool``) in one availability set. Azure
schedules a Reboot for this VM (web-0) and a Redeploy for another one (web-2). The agent runs once per
step, exactly as cron would run ``drainer check``, with the default drain method (``nic``) talking to
the emulated ARM through the real ``azure-mgmt-network`` and ``azure-identity`` clients.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Callable

from drainer.app.report import format_history
from drainer.app.runner import run_once
from drainer.base.errors import EXIT_OK
from drainer.config import AzureConfig, Config, DrainConfig, ImdsConfig, LoggingConfig
from drainer.decide.core import Transition
from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from drainer.io.log import configure, get_logger
from drainer.store.state import StateStore

THIS_VM = "web-0"
VMS = (THIS_VM, "web-1", "web-2")


def _describe(t: Transition) -> str:
    if t.subject == "vm":
        return f"VM {t.from_state} -> {t.to_state} ({t.reason})"
    if t.subject == "event":
        return f"{t.event_type} {t.event_id[:8]}: {t.from_state} -> {t.to_state} ({t.reason})"
    if t.subject == "approval":
        return f"{t.event_type} {t.event_id[:8]}: approval {t.from_state} -> {t.to_state}"
    return f"{t.from_state} -> {t.to_state} ({t.reason})"


def run_demo(out: io.TextIOBase | None = None) -> int:
    """Play the scenario and print it. Returns the exit code (0 when every step went as expected)."""
    stream = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    agent_log = io.StringIO()
    configure(LoggingConfig(format="json", level="info"), stream=agent_log)
    log = get_logger()
    failures: list[str] = []
    with (
        RunningEmulator(list(VMS)) as emulator,
        tempfile.TemporaryDirectory(prefix="drainer-demo-") as state_dir,
    ):
        control = EmulatorControl(emulator.url)
        control.load_balancer_with("lb-web", "web-pool", list(VMS))
        config = Config(
            source="<demo>",
            state_dir=state_dir,
            # The record key in the temporary directory too (its default is beside the state dir).
            drain=DrainConfig(record_key=f"{state_dir}/record/record.key"),
            imds=ImdsConfig(endpoint=emulator.vm_url(THIS_VM), deadline=5.0),
            azure=AzureConfig(arm_endpoint=emulator.url, poll_interval=0.1, deadline=30.0),
            logging=LoggingConfig(format="json"),
        )
        say(
            f"drainer demo: emulated IMDS and ARM at {emulator.url}; this VM is {THIS_VM}; "
            f"state in {state_dir}\n"
        )

        def pool() -> str:
            members = next(iter(control.membership().values()))
            return "lb-web/web-pool: [" + ", ".join(m.removesuffix("-nic") for m in members) + "]"

        ids: dict[str, str] = {}

        def run(title: str, script: Callable[[], None], expect_in_rotation: bool) -> None:
            say(f"== {title}")
            script()
            result = run_once(config, log)
            for t in result.transitions:
                say(f"   {_describe(t)}")
            store = StateStore(state_dir)
            try:
                vm = store.load().vm
            finally:
                store.close()
            where = "IN rotation" if vm.in_rotation else "OUT of rotation"
            say(f"   -> {THIS_VM} is {where}  (exit {result.exit_code});  {pool()}\n")
            if vm.in_rotation != expect_in_rotation or result.exit_code != EXIT_OK:
                failures.append(title)

        def schedule() -> None:
            ids["reboot"] = control.schedule("Reboot", [THIS_VM], not_before_in=900)
            ids["redeploy"] = control.schedule("Redeploy", ["web-2"], not_before_in=600)

        say(f"== before: {pool()}\n")
        run("quiet minute: no scheduled events", lambda: None, expect_in_rotation=True)
        run(
            "Azure schedules a Reboot for web-0 and a Redeploy for web-2",
            schedule,
            expect_in_rotation=False,
        )
        run(
            "the Reboot starts (NotBefore reached or approved)",
            lambda: control.start(ids["reboot"]),
            expect_in_rotation=False,
        )
        run(
            "the Reboot completes: the event disappears",
            lambda: control.remove(ids["reboot"]),
            expect_in_rotation=True,
        )
        run(
            "web-2's Redeploy is cancelled",
            lambda: control.remove(ids["redeploy"]),
            expect_in_rotation=True,
        )

        store = StateStore(state_dir)
        try:
            say("== history (drainer history)")
            for line in format_history(store.history()):
                say(f"   {line}")
        finally:
            store.close()
        arm_writes = len(control.arm_writes())
    if failures:
        say(f"\ndemo FAILED at: {'; '.join(failures)}")
        return 1
    say(
        f"\ndemo OK: web-0 left the pool before its Reboot and returned after it ({arm_writes} NIC "
        "writes); web-2's event was recorded but never acted on."
    )
    return EXIT_OK
