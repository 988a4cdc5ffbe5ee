"""``drainer emulator``: serve the emulator, or script a running one through its control API.

``drainer emulator`` (or ``emulator serve``) serves; ``schedule``, ``start``, ``complete``, ``cancel``,
``lb`` and ``state`` call the control API of an emulator already running (``--url``), so a maintenance
can be played by hand from a second terminal.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from drainer.base.errors import EXIT_OK, EXIT_USAGE, DrainerError

DEFAULT_URL = "http://127.0.0.1:8169"

CONTROL_API = """\
control API (JSON in, JSON out, under <url>/_emulator/):
  GET    state                      incarnation, events, approvals, VMs
  GET    requests                   every request seen
  POST   events                     {"type", "resources"?, "status"?, "not_before_in"?, "duration"?,
                                     "event_id"?, "description"?, "maintenance_seconds"?}
  POST   events/<id>/start          Scheduled -> Started
  DELETE events/<id>                complete or cancel: the event disappears, as on Azure
  PUT    document / DELETE document serve this body verbatim (any bytes) / stop doing so
  POST   faults / DELETE faults     {"match", "status", "count", "body", "delay", "retry_after", "reset"}
  POST   etags                      {"on": bool}  ETag and 304 on scheduled events (default on)
  POST   incarnation                {"value": N}  (the service was re-enabled)
  POST   vms                        {"name", "scale_set"?, "uniform"?}
  POST   vms/<name>/identity        {"system_assigned", "user_assigned"?: [client ids]}  (none: 400)
  POST   reset                      {"incarnation"?}  forget every event, document and fault
  POST   arm/loadbalancers          {"name", "pools": [..], "ip_pools"?: [..], "probe"?, "sku"?}
  POST   arm/join                   {"vm", "lb", "pool", "nic"?, "ipconfig"?}  NIC into a NIC-based pool
  POST   arm/ip-members             {"lb", "pool", "vm" or "ip", "admin_state"?}  address into an IP pool
  POST   arm/nics | arm/app-gateways, DELETE arm/loadbalancers/<lb>/pools/<pool>
  GET    arm/membership | arm/nics/<name> | arm/writes
  POST   arm/settings | arm/fail-lro | arm/mutate    slow or failing operations, a concurrent writer
  POST   arm/permissions            {"principal": VM, "assignments": [{"scope"?, "actions", "notActions"?}]}
                                    what the permissions API answers (default: the nic role)
Each VM <name> asks IMDS under <url>/vm/<name> and has a NIC <name>-nic.
"""

EXAMPLES = """\
examples:
  drainer emulator --vm web-0 --vm web-1          # serve IMDS + ARM on 127.0.0.1:8169
  drainer emulator lb lb-web --pool web-pool --vm web-0 --vm web-1
  drainer emulator schedule Reboot --vm web-0 --not-before-in 900
  drainer emulator start <event-id>               # the maintenance begins
  drainer emulator complete <event-id>            # it is over: the event disappears
  drainer emulator state
  DRAINER_IMDS_ENDPOINT=http://127.0.0.1:8169/vm/web-0 \\
    DRAINER_ARM_ENDPOINT=http://127.0.0.1:8169 drainer check
"""


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """The ``emulator`` subcommand and its own subcommands."""
    emulator = sub.add_parser(
        "emulator",
        help="serve the IMDS + ARM emulator on loopback, or script a running one",
        description="Serve a local IMDS and ARM network emulator (loopback only), or script a running "
        "one through its control API.",
        epilog=f"{CONTROL_API}\n{EXAMPLES}",
        formatter_class=formatter,
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback only)")
    emulator.add_argument("--port", type=int, default=8169, help="port to listen on (default 8169)")
    emulator.add_argument(
        "--vm", action="append", default=[], metavar="NAME", help="VM names to know (first is the default VM)"
    )
    emulator.add_argument("--url", default=DEFAULT_URL, help=f"a running emulator (default {DEFAULT_URL})")
    actions = emulator.add_subparsers(dest="emulator_action", metavar="ACTION")
    actions.add_parser("serve", help="serve (the default)")
    schedule = actions.add_parser("schedule", help="schedule an event; prints its EventId")
    schedule.add_argument("type", choices=("Freeze", "Reboot", "Redeploy", "Preempt", "Terminate"))
    schedule.add_argument("--vm", dest="resources", action="append", default=[], metavar="NAME")
    schedule.add_argument("--not-before-in", type=float, metavar="SECONDS", help="NotBefore from now")
    schedule.add_argument("--duration", type=int, default=-1, help="DurationInSeconds (-1: unknown)")
    schedule.add_argument("--started", action="store_true", help="already Started (a hardware failure)")
    for name, text in (
        ("start", "Scheduled -> Started"),
        ("complete", "the maintenance is over: the event disappears"),
        ("cancel", "cancel a Scheduled event: it disappears"),
    ):
        actions.add_parser(name, help=text).add_argument("event_id", metavar="EVENT_ID")
    lb = actions.add_parser("lb", help="add a load balancer with a NIC-based pool holding the VMs")
    lb.add_argument("name")
    lb.add_argument("--pool", default="pool", help="pool name (default: pool)")
    lb.add_argument("--vm", dest="members", action="append", default=[], metavar="NAME")
    actions.add_parser("state", help="print the emulator's state (events, approvals, VMs)")


def main(args: argparse.Namespace) -> int:
    """Run the ``emulator`` subcommand. Raises DrainerError for a taken port or an unreachable URL."""
    action = args.emulator_action or "serve"
    if action == "serve":
        return _serve(args.host, args.port, args.vm or ["web-0"])
    from drainer.emulator.control import EmulatorControl  # noqa: PLC0415

    control = EmulatorControl(args.url)
    try:
        if action == "schedule":
            fields: dict[str, Any] = {"duration": args.duration}
            if args.not_before_in is not None:
                fields["not_before_in"] = args.not_before_in
            if args.started:
                fields["status"] = "Started"
            print(control.schedule(args.type, args.resources, **fields))
        elif action == "start":
            control.start(args.event_id)
        elif action in ("complete", "cancel"):
            control.remove(args.event_id)
        elif action == "lb":
            control.load_balancer_with(args.name, args.pool, args.members)
        else:
            print(json.dumps(control.state(), indent=2))
    except OSError as exc:  # urllib's URLError is an OSError; RuntimeError is the API's own answer
        reason = getattr(exc, "reason", exc)
        raise _EmulatorError(
            f"emulator at {args.url} unreachable ({reason}): start one with `drainer emulator`"
        ) from exc
    except RuntimeError as exc:
        if "HTTP 404" in str(exc) and action in ("start", "complete", "cancel"):
            raise _EmulatorError(
                f"emulator at {args.url} has no event {args.event_id} (`drainer emulator state` lists them)"
            ) from exc
        raise _EmulatorError(str(exc)) from exc
    return EXIT_OK


class _EmulatorError(DrainerError):
    exit_code = EXIT_USAGE


def _serve(host: str, port: int, vms: list[str]) -> int:
    from drainer.emulator.server import serve_forever  # noqa: PLC0415

    try:
        return serve_forever(host, port, vms)
    except OSError as exc:
        what = exc.strerror or str(exc)
        raise _EmulatorError(
            f"emulator: cannot listen on {host}:{port}: {what} (another emulator running? "
            "stop it or choose another --port)"
        ) from exc
