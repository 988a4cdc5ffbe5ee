"""Configuration: a frozen, typed object loaded from TOML and validated up front.

The sections are NamedTuples (immutable and typed like frozen dataclasses, but several times cheaper to
define, which the every-minute idle run pays for at start-up).

Unknown keys, wrong types and out-of-range values are rejected with the file, the key and the reason.
Environment overrides (for tests and containers): ``DRAINER_CONFIG`` (the file),
``DRAINER_IMDS_ENDPOINT``, ``DRAINER_ARM_ENDPOINT`` and ``DRAINER_STATE_DIR``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from drainer.base.errors import ConfigError
from drainer.base.events import EventType

DEFAULT_CONFIG_PATH = "/etc/drainer/config.toml"
DEFAULT_STATE_DIR = "/var/lib/drainer"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_HOOKS_DIR = "/etc/drainer/hooks.d"
HOOK_PHASES = ("on-event", "pre-drain", "post-drain", "pre-restore", "post-restore")

ACTIONS = ("drain", "ignore")
DRAIN_METHODS = ("nic", "admin-state", "probe", "log")
DEFAULT_DISABLED_FILE = "/etc/drainer/disabled"
IDENTITIES = ("managed", "default")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

# The config file's tables, in the order config.example.toml documents them.
SECTIONS = (
    "vm",
    "imds",
    "policy",
    "drain",
    "azure",
    "fleet",
    "approval",
    "restore",
    "hooks",
    "daemon",
    "metrics",
    "probe",
    "logging",
    "retention",
)

T = TypeVar("T")
# An unknown event type always holds the VM (it is not configurable).
_KNOWN_TYPES = tuple(t for t in EventType if t is not EventType.UNKNOWN)
_DEFAULT_ACTIONS: Mapping[str, str] = MappingProxyType({t.value: "drain" for t in _KNOWN_TYPES})
RESTORE_WHEN = ("cleared", "recovered")
# Microsoft documents the event's removal as the signal to recover, and a second impact while it is
# Started (README "restore_when"): "cleared" for every type unless the operator opts in.
_DEFAULT_RESTORE_WHEN: Mapping[str, str] = MappingProxyType({t.value: "cleared" for t in _KNOWN_TYPES})


class ImdsConfig(NamedTuple):
    endpoint: str = DEFAULT_IMDS_ENDPOINT
    api_version: str = "2020-07-01"
    instance_api_version: str = "2021-02-01"
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    # Total time one run may spend on one IMDS call, retries and Retry-After waits included.
    deadline: float = 30.0
    max_body_bytes: int = 1_048_576


class PolicyConfig(NamedTuple):
    # EventType value -> "drain" | "ignore"
    actions: Mapping[str, str] = _DEFAULT_ACTIONS
    # A Freeze shorter than this (in seconds, known duration) is not worth leaving rotation for.
    freeze_min_duration_seconds: int = 30
    # 0: act as soon as the event is seen; N > 0: act when NotBefore is at most N seconds away.
    lead_time_seconds: int = 0
    # Cleared events are kept this long for `status`, `history` and reappearance detection.
    retention_days: int = 30
    # Failed or held drains and restores are retried with backoff, at most this many seconds apart
    # (0: every run).
    retry_max_seconds: int = 60
    # Reconcile with Azure (the NICs' pool references and drainer's records on them) at most this
    # often while nothing happens (seconds; 0: never periodically), and at most every
    # `reconcile_active_seconds` while an event holds or concerns this VM. Also at every boot and
    # whenever the local state was missing or unreadable.
    reconcile_interval_seconds: int = 1800
    reconcile_active_seconds: int = 300
    # Within this many seconds of NotBefore (or once the event Started), the impact comes whatever
    # drainer does: drain then even when that takes a pool below its floor (and say so).
    force_before_seconds: int = 120
    # -- restore_when (issue 14): when a VM goes back after an event, per EventType --
    # "cleared": once the event is no longer listed; "recovered": once its impact is over (see
    # drainer/decide/recovery.py) and the restore gate has passed for `recovered_grace_seconds`.
    restore_when: Mapping[str, str] = _DEFAULT_RESTORE_WHEN
    recovered_grace_seconds: int = 60
    # The daemon saw no poll for this many seconds more than its interval: the VM stalled (an impact).
    stall_seconds: float = 5.0

    def action_for(self, event_type: EventType) -> str:
        return self.actions.get(event_type.value, "drain")


class DrainConfig(NamedTuple):
    method: str = "nic"
    # Before an early drain, at least this many other members of each pool must stay in service (not
    # counting members out of it, nor those other VMs announced they are taking out); otherwise the
    # drain is held until it is forced. Per pool: pool id, "<load balancer>/<pool>" or pool name ->
    # floor, "*" for the others (1 when not given); a single number N is {"*": N}
    # (drainer.decide.intents.floor_for).
    min_in_service: Mapping[str, int] = MappingProxyType({"*": 1})
    # At most this many VMs of a pool out by drainer's choice at once (VMs whose NIC carries
    # drainer's record for the pool, or a live intent naming it; 0: only min_in_service limits it).
    max_unavailable: int = 0
    # Also remove (and restore) Application Gateway backend pool references of the VM's NICs.
    application_gateways: bool = False
    # NICs to drain, as resource ids or names in the VM's resource group; empty: discover them.
    nics: tuple[str, ...] = ()
    # A pool, load balancer or NIC that answers 404 is dropped from a restore only once it answered
    # 404 at least this many times over at least this many seconds (one answer proves nothing).
    gone_after_reads: int = 3
    gone_after_seconds: int = 300


class ApprovalConfig(NamedTuple):
    enabled: bool = True
    # Event types approved early once this VM is drained (a Preempt needs no approval).
    types: tuple[str, ...] = ("Reboot", "Redeploy", "Freeze", "Terminate")
    # Local TCP ports whose established connections must reach zero before approving.
    service_ports: tuple[int, ...] = ()
    # The longest wait for those connections, from the moment the VM left rotation.
    drain_timeout: float = 300.0
    # Within this many seconds of NotBefore nothing is approved: the maintenance starts then anyway.
    near_seconds: float = 60.0
    # Approve even when the drain failed or was held (the VM may still be serving).
    when_not_drained: bool = False
    # While waiting for the other listed VMs, read their pool membership at most this often.
    peer_check_interval: float = 30.0
    # The listed VMs approve in turn (sorted by name), only the first three: the k-th k slots after it
    # was out and knew of the event, if it is still Scheduled: a dead first approver costs one slot.
    slot_seconds: float = 20.0
    # -- approve at once (issue 14) --
    # Events drainer ignores (a Freeze shorter than freeze_min_duration_seconds, a type set to
    # "ignore") and listing this VM alone: approved as soon as seen; it stays in rotation either way.
    approve_ignored: bool = True
    # EventSource "User" (an operator's restart or redeploy) listing this VM alone: approved once
    # drained, without waiting for connections or NotBefore.
    approve_user: bool = True


class FleetConfig(NamedTuple):
    # An intent (a VM announcing it leaves its pools) counts at most this long from when a VM first
    # saw it, whatever expiry it states: a VM that died after announcing blocks no one longer.
    claim_seconds: int = 900
    # Drains that are not forced, and restores, start after a random delay of up to this many
    # seconds, so VMs told at the same second do not write to ARM at the same second.
    spread_seconds: float = 5.0


class RestoreConfig(NamedTuple):
    # A local health check that must pass before the VM is put back (both optional):
    health_url: str = ""  # answers 2xx
    health_command: tuple[str, ...] = ()  # argv, exits 0
    # After this long the VM is put back anyway, with a warning.
    health_timeout: float = 300.0


class DaemonConfig(NamedTuple):
    poll_interval: float = 1.0  # seconds between checks (Preempt gives 30 s of notice)
    stop_timeout: float = 20.0  # on SIGTERM, wait this long for the current check to finish
    error_log_interval: float = 600.0  # the same error is logged once, then at most this often


class MetricsConfig(NamedTuple):
    enabled: bool = False
    address: str = "127.0.0.1:9839"  # the daemon's /metrics and /healthz
    textfile: str = ""  # one-shot: node_exporter textfile collector file, written atomically


class ProbeConfig(NamedTuple):
    # method = "probe": the daemon answers the load balancer's health probe here: 200 in rotation,
    # 503 while drained. Point the probe at it (it must be reachable from 168.63.129.16).
    address: str = "0.0.0.0:8088"
    path: str = "/drainer/ready"
    # Also (one-shot and daemon): this file exists while the VM is out of rotation, for an
    # application whose own health check should fail then.
    flag_file: str = "/run/drainer/out-of-rotation"


class HooksConfig(NamedTuple):
    dir: str = DEFAULT_HOOKS_DIR
    timeout: float = 60.0  # seconds per hook, then SIGTERM to its process group
    kill_grace: float = 5.0  # seconds between SIGTERM and SIGKILL
    on_failure: str = "abort"  # a failing pre-drain hook: "abort" the drain or "continue"
    output_limit: int = 8192  # bytes of stdout and of stderr kept per hook run (head and tail)
    # "phase/name" -> seconds, overriding ``timeout`` for one hook.
    timeouts: Mapping[str, float] = MappingProxyType({})


class AzureConfig(NamedTuple):
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    identity: str = "managed"  # managed identity through IMDS, or DefaultAzureCredential
    client_id: str = ""  # a user-assigned managed identity
    poll_interval: float = 1.0  # long-running operation polling (the SDK's default is 30 s)
    # Total seconds one drain or restore may spend on ARM, SDK retries and Retry-After included.
    deadline: float = 120.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # Every HTTP request to ARM (retries and operation polls included) takes a token from one
    # bucket per process: at most this many per second (0: no limit), in bursts of at most
    # ``max_call_burst``: a drain of a VM with a few NICs (about 6 requests each) is one burst and
    # is never slowed down; a retry loop or a long series of actions is.
    max_calls_per_second: float = 5.0
    max_call_burst: int = 40


class RetentionConfig(NamedTuple):
    # How much state.db keeps (issue 14), pruned in a run that writes anyway. Cleared events older than
    # [policy] retention_days go too.
    cleared_events: int = 1000  # the newest this many cleared events
    history_days: int = 365  # history lines younger than this ...
    history_rows: int = 20000  # ... and at most this many


class LoggingConfig(NamedTuple):
    format: str = "auto"
    level: str = "info"
    syslog: bool = False
    syslog_address: str = "/dev/log"
    eventlog: bool = False


class Config(NamedTuple):
    source: str = "<defaults>"
    vm_name: str = ""
    state_dir: str = DEFAULT_STATE_DIR
    dry_run: bool = False
    imds: ImdsConfig = ImdsConfig()
    policy: PolicyConfig = PolicyConfig()
    drain: DrainConfig = DrainConfig()
    azure: AzureConfig = AzureConfig()
    hooks: HooksConfig = HooksConfig()
    approval: ApprovalConfig = ApprovalConfig()
    restore: RestoreConfig = RestoreConfig()
    daemon: DaemonConfig = DaemonConfig()
    metrics: MetricsConfig = MetricsConfig()
    probe: ProbeConfig = ProbeConfig()
    fleet: FleetConfig = FleetConfig()
    # While this file exists, drainer does nothing (check and run exit or idle, saying so).
    disabled_file: str = DEFAULT_DISABLED_FILE
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()


class _Section:
    """Reads typed keys out of one TOML table and remembers which were used."""

    def __init__(self, path: str, name: str, raw: object) -> None:
        self.path = path
        self.name = name
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(path, name, "must be a table")
        self.raw: dict[str, Any] = raw
        self.used: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, kind: type[T], default: T) -> T:
        self.used.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(
                self.path, self.key(key), f"must be a {kind.__name__}, not {type(value).__name__}"
            )
        return value

    def number(self, key: str, kind: type[T], default: T, *, low: float, high: float) -> T:
        value = self.get(key, kind, default)
        if not low <= value <= high:  # type: ignore[operator]
            raise ConfigError(self.path, self.key(key), f"must be between {low:g} and {high:g}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(self.path, self.key(key), f"must be one of {', '.join(choices)}")
        return value

    def done(self, *, subtables: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.raw) - self.used - set(subtables))
        if unknown:
            raise ConfigError(self.path, self.key(unknown[0]), "unknown key")


def _check_endpoint(path: str, key: str, url: str) -> str:
    from drainer.base.urls import endpoint_problem  # noqa: PLC0415 - only for a configured endpoint

    problem = endpoint_problem(url)
    if problem:
        raise ConfigError(path, key, f"{problem}, not {url!r}")
    return url.rstrip("/")


def _check_address(path: str, key: str, value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(path, key, f"must be host:port, not {value!r}")
    return value


def parse_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    import ipaddress  # noqa: PLC0415 - only for a plain-http endpoint, never on the default path

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _floors(path: str, section: _Section) -> Mapping[str, int]:
    """``[drain] min_in_service``: a number (every pool) or a table (pool -> floor). Raises ConfigError."""
    raw = section.raw.get("min_in_service")
    if not isinstance(raw, dict):
        return MappingProxyType({"*": section.number("min_in_service", int, 1, low=0, high=1000)})
    section.used.add("min_in_service")
    floors: dict[str, int] = {}
    for name, value in raw.items():
        if not name or isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
            raise ConfigError(
                path,
                f"drain.min_in_service.{name}",
                'must map a pool (its id, "<load balancer>/<pool>", its name, or "*") to a floor '
                "between 0 and 1000",
            )
        floors[name] = value
    return MappingProxyType(floors)


def _check_arm_endpoint(path: str, key: str, url: str) -> str:
    """ARM carries bearer tokens: https only, except for an emulator on a loopback address."""
    url = _check_endpoint(path, key, url)
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        raise ConfigError(path, key, "must use https (plain http is allowed only on a loopback address)")
    return url


def from_mapping(raw: Mapping[str, Any], path: str) -> Config:
    """Build a Config from a decoded TOML mapping. Raises ConfigError naming the key and reason."""
    top = _Section(path, "", dict(raw))
    imds_s = _Section(path, "imds", raw.get("imds"))
    imds = ImdsConfig(
        endpoint=_check_endpoint(path, "imds.endpoint", imds_s.get("endpoint", str, DEFAULT_IMDS_ENDPOINT)),
        api_version=imds_s.get("api_version", str, "2020-07-01"),
        instance_api_version=imds_s.get("instance_api_version", str, "2021-02-01"),
        connect_timeout=imds_s.number("connect_timeout", float, 2.0, low=0.1, high=60),
        read_timeout=imds_s.number("read_timeout", float, 5.0, low=0.1, high=300),
        deadline=imds_s.number("deadline", float, 30.0, low=0.1, high=3600),
        max_body_bytes=imds_s.number("max_body_bytes", int, 1_048_576, low=1024, high=1 << 30),
    )
    imds_s.done()
    if imds.deadline < imds.connect_timeout:
        raise ConfigError(path, "imds.deadline", "must be at least imds.connect_timeout")

    policy_s = _Section(path, "policy", raw.get("policy"))
    actions_s = _Section(path, "policy.actions", policy_s.raw.get("actions"))
    actions = MappingProxyType({t.value: actions_s.choice(t.value, ACTIONS, "drain") for t in _KNOWN_TYPES})
    actions_s.done()
    policy = PolicyConfig(
        actions=actions,
        freeze_min_duration_seconds=policy_s.number(
            "freeze_min_duration_seconds", int, 30, low=0, high=86400
        ),
        lead_time_seconds=policy_s.number("lead_time_seconds", int, 0, low=0, high=7 * 86400),
        retention_days=policy_s.number("retention_days", int, 30, low=1, high=3650),
        retry_max_seconds=policy_s.number("retry_max_seconds", int, 60, low=0, high=3600),
        reconcile_interval_seconds=policy_s.number(
            "reconcile_interval_seconds", int, 1800, low=0, high=7 * 86400
        ),
        reconcile_active_seconds=policy_s.number("reconcile_active_seconds", int, 300, low=0, high=86400),
        force_before_seconds=policy_s.number("force_before_seconds", int, 120, low=0, high=86400),
    )
    policy = _restore_when(path, policy_s, policy)
    policy_s.done(subtables=("actions", "restore_when"))

    drain_s = _Section(path, "drain", raw.get("drain"))
    nics = drain_s.get("nics", list, [])
    if not all(isinstance(n, str) and n for n in nics):
        raise ConfigError(path, "drain.nics", "must be a list of NIC names or resource ids")
    drain = DrainConfig(
        method=drain_s.choice("method", DRAIN_METHODS, "nic"),
        min_in_service=_floors(path, drain_s),
        max_unavailable=drain_s.number("max_unavailable", int, 0, low=0, high=1000),
        application_gateways=drain_s.get("application_gateways", bool, False),
        gone_after_reads=drain_s.number("gone_after_reads", int, 3, low=1, high=1000),
        gone_after_seconds=drain_s.number("gone_after_seconds", int, 300, low=0, high=30 * 86400),
        nics=tuple(nics),
    )
    drain_s.done()

    azure_s = _Section(path, "azure", raw.get("azure"))
    azure = AzureConfig(
        arm_endpoint=_check_arm_endpoint(
            path, "azure.arm_endpoint", azure_s.get("arm_endpoint", str, DEFAULT_ARM_ENDPOINT)
        ),
        identity=azure_s.choice("identity", IDENTITIES, "managed"),
        client_id=azure_s.get("client_id", str, ""),
        poll_interval=azure_s.number("poll_interval", float, 1.0, low=0.05, high=60),
        deadline=azure_s.number("deadline", float, 120.0, low=1, high=3600),
        connect_timeout=azure_s.number("connect_timeout", float, 5.0, low=0.1, high=120),
        read_timeout=azure_s.number("read_timeout", float, 30.0, low=0.1, high=600),
        max_calls_per_second=azure_s.number("max_calls_per_second", float, 5.0, low=0, high=1000),
        max_call_burst=azure_s.number("max_call_burst", int, 40, low=1, high=100_000),
    )
    azure_s.done()

    fleet_s = _Section(path, "fleet", raw.get("fleet"))
    if "lease" in fleet_s.raw:
        raise ConfigError(
            path,
            "fleet.lease",
            "is no longer used: the floor is decided from the pools themselves, with nothing to "
            "create (README: the fleet model); remove it",
        )
    fleet = FleetConfig(
        claim_seconds=fleet_s.number("claim_seconds", int, 900, low=30, high=86400),
        spread_seconds=fleet_s.number("spread_seconds", float, 5.0, low=0, high=600),
    )
    fleet_s.done()

    hooks_s = _Section(path, "hooks", raw.get("hooks"))
    timeouts_s = _Section(path, "hooks.timeouts", hooks_s.raw.get("timeouts"))
    timeouts: dict[str, float] = {}
    for key in list(timeouts_s.raw):
        phase, _, name = key.partition("/")
        if phase not in HOOK_PHASES or not name or "/" in name:
            raise ConfigError(
                path,
                f"hooks.timeouts.{key}",
                f'must be "<phase>/<hook name>" with a phase of {", ".join(HOOK_PHASES)}',
            )
        timeouts[key] = timeouts_s.number(key, float, 60.0, low=0.1, high=86400)
    timeouts_s.done()
    hooks = HooksConfig(
        dir=hooks_s.get("dir", str, DEFAULT_HOOKS_DIR),
        timeout=hooks_s.number("timeout", float, 60.0, low=0.1, high=86400),
        kill_grace=hooks_s.number("kill_grace", float, 5.0, low=0.0, high=600),
        on_failure=hooks_s.choice("on_failure", ("abort", "continue"), "abort"),
        output_limit=hooks_s.number("output_limit", int, 8192, low=256, high=1 << 24),
        timeouts=MappingProxyType(timeouts),
    )
    hooks_s.done(subtables=("timeouts",))

    approval_s = _Section(path, "approval", raw.get("approval"))
    types = approval_s.get("types", list, list(ApprovalConfig().types))
    known_types = {t.value for t in EventType}
    if not all(isinstance(t, str) and t in known_types for t in types):
        raise ConfigError(
            path, "approval.types", f"must be a list of event types ({', '.join(sorted(known_types))})"
        )
    ports = approval_s.get("service_ports", list, [])
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise ConfigError(path, "approval.service_ports", "must be a list of TCP ports (1-65535)")
    approval = ApprovalConfig(
        enabled=approval_s.get("enabled", bool, True),
        types=tuple(types),
        service_ports=tuple(ports),
        drain_timeout=approval_s.number("drain_timeout", float, 300.0, low=0, high=86400),
        near_seconds=approval_s.number("near_seconds", float, 60.0, low=0, high=86400),
        when_not_drained=approval_s.get("when_not_drained", bool, False),
        peer_check_interval=approval_s.number("peer_check_interval", float, 30.0, low=0, high=3600),
        slot_seconds=approval_s.number("slot_seconds", float, 20.0, low=0, high=3600),
    )
    approval = approval._replace(
        approve_ignored=approval_s.get("approve_ignored", bool, True),
        approve_user=approval_s.get("approve_user", bool, True),
    )
    approval_s.done()

    restore_s = _Section(path, "restore", raw.get("restore"))
    health_url = restore_s.get("health_url", str, "")
    if health_url:
        health_url = _check_endpoint(path, "restore.health_url", health_url)
    command = restore_s.get("health_command", list, [])
    if not all(isinstance(c, str) and c for c in command):
        raise ConfigError(path, "restore.health_command", "must be an argv list of strings (no shell)")
    restore = RestoreConfig(
        health_url=health_url,
        health_command=tuple(command),
        health_timeout=restore_s.number("health_timeout", float, 300.0, low=0, high=86400),
    )
    restore_s.done()

    daemon_s = _Section(path, "daemon", raw.get("daemon"))
    daemon = DaemonConfig(
        poll_interval=daemon_s.number("poll_interval", float, 1.0, low=0.1, high=3600),
        stop_timeout=daemon_s.number("stop_timeout", float, 20.0, low=0, high=3600),
        error_log_interval=daemon_s.number("error_log_interval", float, 600.0, low=0, high=86400),
    )
    daemon_s.done()

    metrics_s = _Section(path, "metrics", raw.get("metrics"))
    metrics = MetricsConfig(
        enabled=metrics_s.get("enabled", bool, False),
        address=_check_address(path, "metrics.address", metrics_s.get("address", str, "127.0.0.1:9839")),
        textfile=metrics_s.get("textfile", str, ""),
    )
    metrics_s.done()

    probe_s = _Section(path, "probe", raw.get("probe"))
    probe_path = probe_s.get("path", str, "/drainer/ready")
    if not probe_path.startswith("/"):
        raise ConfigError(path, "probe.path", "must start with /")
    probe = ProbeConfig(
        address=_check_address(path, "probe.address", probe_s.get("address", str, "0.0.0.0:8088")),
        path=probe_path,
        flag_file=probe_s.get("flag_file", str, "/run/drainer/out-of-rotation"),
    )
    probe_s.done()

    log_s = _Section(path, "logging", raw.get("logging"))
    logging_cfg = LoggingConfig(
        format=log_s.choice("format", LOG_FORMATS, "auto"),
        level=log_s.choice("level", LOG_LEVELS, "info"),
        syslog=log_s.get("syslog", bool, False),
        syslog_address=log_s.get("syslog_address", str, "/dev/log"),
        eventlog=log_s.get("eventlog", bool, False),
    )
    log_s.done()
    if logging_cfg.eventlog and sys.platform != "win32":
        raise ConfigError(path, "logging.eventlog", "the Windows Event Log exists only on Windows")

    vm_s = _Section(path, "vm", raw.get("vm"))
    vm_name = vm_s.get("name", str, "")
    vm_s.done()

    state_dir = top.get("state_dir", str, DEFAULT_STATE_DIR)
    if not state_dir:
        raise ConfigError(path, "state_dir", "must not be empty")
    config = Config(
        source=path,
        vm_name=vm_name,
        state_dir=state_dir,
        dry_run=top.get("dry_run", bool, False),
        imds=imds,
        policy=policy,
        drain=drain,
        azure=azure,
        hooks=hooks,
        approval=approval,
        restore=restore,
        daemon=daemon,
        metrics=metrics,
        probe=probe,
        fleet=fleet,
        disabled_file=top.get("disabled_file", str, DEFAULT_DISABLED_FILE),
        logging=logging_cfg,
    )
    top.done(subtables=SECTIONS)
    return config._replace(retention=_retention(path, raw))


def _retention(path: str, raw: Mapping[str, Any]) -> RetentionConfig:
    """The [retention] table (issue 14), read on its own. Raises ConfigError."""
    section = _Section(path, "retention", raw.get("retention"))
    retention = RetentionConfig(
        cleared_events=section.number("cleared_events", int, 1000, low=1, high=10_000_000),
        history_days=section.number("history_days", int, 365, low=1, high=36500),
        history_rows=section.number("history_rows", int, 20000, low=10, high=100_000_000),
    )
    section.done()
    return retention


def _restore_when(path: str, policy_s: _Section, policy: PolicyConfig) -> PolicyConfig:
    """The [policy] keys of restore_when (issue 14), read on their own. Raises ConfigError."""
    when_s = _Section(path, "policy.restore_when", policy_s.raw.get("restore_when"))
    # Preempt and Terminate end the VM: only their removal ends them.
    ends_vm = (EventType.PREEMPT, EventType.TERMINATE)
    when = MappingProxyType(
        {
            t.value: when_s.choice(t.value, ("cleared",) if t in ends_vm else RESTORE_WHEN, "cleared")
            for t in _KNOWN_TYPES
        }
    )
    when_s.done()
    return policy._replace(
        restore_when=when,
        recovered_grace_seconds=policy_s.number("recovered_grace_seconds", int, 60, low=0, high=86400),
        stall_seconds=policy_s.number("stall_seconds", float, 5.0, low=0.5, high=3600),
    )
