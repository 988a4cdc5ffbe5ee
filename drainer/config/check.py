"""``drainer config check``: what loads fine but does not do what the operator meant.

The loader (``drainer.config``) refuses what is invalid; this module looks for what is valid yet
wrong: a misspelled phase directory whose hooks never run, a configured hooks directory that does not
exist, an option that has no effect without another, an early approval that waits for no connection,
two listeners on one port.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import NamedTuple

from drainer.config import DEFAULT_HOOKS_DIR, HOOK_PHASES, ApprovalConfig, Config, parse_address

# Addresses that listen on every interface (compared, never bound here).
_ANY_IPV4 = "0.0.0.0"  # noqa: S104  # nosec B104
_WILDCARDS = (_ANY_IPV4, "::", "")


class Finding(NamedTuple):
    """One problem: ``error`` (``config check`` exits 2) or ``warning`` (reported, exit 0)."""

    severity: str
    message: str


def findings(config: Config) -> list[Finding]:
    """Everything ``config check`` reports beyond refused hooks. Raises nothing.

    A fresh install (the defaults, the package's hooks directory) is clean but for what its operator
    must decide: a warning that always fires is a warning nobody reads.
    """
    return [*_hooks_dir(config), *_no_effect(config), *_approval(config), *_addresses(config)]


def _hooks_dir(config: Config) -> list[Finding]:
    base = Path(config.hooks.dir)
    if not base.exists():
        if config.hooks.dir == DEFAULT_HOOKS_DIR:
            return []  # no hooks: the default, unless installed from the package (which creates it)
        return [
            Finding(
                "warning",
                f"hooks dir {base} does not exist: no hook will run "
                f"(mkdir -p {base}/pre-drain to add some, or set [hooks] dir)",
            )
        ]
    if not base.is_dir():
        return [Finding("error", f"hooks dir {base} is not a directory: set [hooks] dir to a directory")]
    found: list[Finding] = []
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return [Finding("error", f"hooks dir {base} cannot be read: {exc.strerror}")]
    for entry in entries:
        name = entry.name
        if name in HOOK_PHASES or name.startswith("."):
            continue
        if entry.is_dir():
            close = difflib.get_close_matches(name, HOOK_PHASES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"phases are {', '.join(HOOK_PHASES)}"
            found.append(Finding("error", f"{entry}: not a phase directory, its hooks never run ({hint})"))
        else:
            found.append(
                Finding(
                    "warning",
                    f"{entry}: outside any phase directory, never runs "
                    f"(move it into one of {', '.join(HOOK_PHASES)})",
                )
            )
    return found


def _no_effect(config: Config) -> list[Finding]:
    found: list[Finding] = []
    if config.metrics.textfile and not config.metrics.enabled:
        found.append(
            Finding(
                "error",
                "[metrics] textfile is set but [metrics] enabled is false: nothing is written "
                "(set enabled = true)",
            )
        )
    return found


def waits_for_connections(approval: ApprovalConfig) -> bool:
    """Whether an approval waits for the service's connections to end: any ports to watch (a list, or
    a value that finds them, such as "auto") do."""
    return bool(approval.service_ports)


def _approval(config: Config) -> list[Finding]:
    approval = config.approval
    if not (approval.enabled and approval.types) or waits_for_connections(approval):
        return []
    return [
        Finding(
            "warning",
            "[approval] enabled with no [approval] service_ports: nothing waits for open connections, "
            "maintenance is approved as soon as the VM is out of rotation and may start while clients "
            "are still connected (list the service's ports in service_ports, or set enabled = false)",
        )
    ]


def _overlap(a: str, b: str) -> bool:
    """Whether listeners on these two addresses would collide (same port, same or wildcard host)."""
    host_a, port_a = parse_address(a)
    host_b, port_b = parse_address(b)
    if port_a != port_b:
        return False
    return host_a == host_b or host_a in _WILDCARDS or host_b in _WILDCARDS


def _addresses(config: Config) -> list[Finding]:
    if not (config.metrics.enabled and config.drain.method == "probe"):
        return []  # only the daemon with both on listens twice
    metrics, probe = config.metrics.address, config.probe.address
    if metrics == probe:
        return [
            Finding(
                "warning",
                f"[metrics] address and [probe] address are both {metrics}: one listener serves both, "
                "so /metrics is reachable wherever the load balancer's probe is (give them different "
                "ports)",
            )
        ]
    if _overlap(metrics, probe):
        return [
            Finding(
                "error",
                f"[metrics] address {metrics} and [probe] address {probe} share a port: the daemon "
                "cannot listen on both (give them different ports)",
            )
        ]
    return []
