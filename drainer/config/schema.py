"""The configuration's one table: every key of the file with its type, default, allowed values and
meaning, in the order config.example.toml lists them.

A key's default is its section's field default (``drainer.config.sections``), and its type is its
default's: neither is written again here. Each row adds what they cannot say: the meaning, and a
range, choices or a check of the value (``drainer.config.values``). ``TABLES`` is what
``from_mapping``, ``drainer config show``, docs/configuration.md and the test of config.example.toml
read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from drainer.base.events import EventType
from drainer.config.sections import (
    KNOWN_TYPES,
    ApprovalConfig,
    AzureConfig,
    Config,
    DaemonConfig,
    DrainConfig,
    FleetConfig,
    HooksConfig,
    ImdsConfig,
    LoggingConfig,
    MetricsConfig,
    PolicyConfig,
    ProbeConfig,
    RestoreConfig,
    RetentionConfig,
)
from drainer.config.values import (
    ADDRESS,
    ARGV,
    ARM_ENDPOINT,
    ENDPOINT,
    EVENT_TYPES,
    FLOORS,
    HOOK_NAME,
    NICS,
    NOT_EMPTY,
    OPTIONAL_ENDPOINT,
    SERVICE_PORTS,
    URL_PATH,
    WINDOWS_ONLY,
    Check,
    floors_shown,
)

ACTIONS = ("drain", "ignore")
DRAIN_METHODS = ("nic", "admin-state", "probe", "log")
IDENTITIES = ("managed", "default")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
RESTORE_WHEN = ("cleared", "recovered")
ON_FAILURE = ("abort", "continue")
# Preempt and Terminate end the VM: only their removal ends them.
_ENDS_VM = (EventType.PREEMPT.value, EventType.TERMINATE.value)
_DAY = 86400


# The table's rows are small slotted classes, not NamedTuples: defining a NamedTuple costs about as much
# as building the whole table, and they are only read.


class Rule:
    """What a field's type and default do not say: the meaning, and a range, choices or a check."""

    __slots__ = ("check", "choices", "high", "low", "meaning", "of", "shown")

    def __init__(
        self,
        meaning: str,
        low: float | None = None,
        high: float | None = None,
        *,
        choices: tuple[str, ...] = (),
        check: Check | None = None,
        of: type | None = None,
        shown: Callable[[Any], Any] | None = None,
    ) -> None:
        self.meaning = meaning
        self.shown = shown  # the value as the file writes it, where the config holds another form
        self.low = low
        self.high = high
        self.choices = choices
        self.check = check
        self.of = of  # the key's type, where its default's is not it (a string or a list)


class Key(Rule):
    """One key of the configuration file, a row of the table: a rule, where it applies, the key's type
    (bool, int, float, str, or list: kept as a tuple) and its default."""

    __slots__ = ("default", "kind", "name", "table")

    def __init__(self, table: str, name: str, default: Any, rule: Rule, kind: type | None = None) -> None:
        super().__init__(
            rule.meaning,
            rule.low,
            rule.high,
            choices=rule.choices,
            check=rule.check,
            of=rule.of,
            shown=rule.shown,
        )
        self.table = table  # "" (the top level), "imds", "policy.actions", ...
        self.name = name
        self.default = rule.shown(default) if rule.shown else default
        self.kind: type = kind or rule.of or (list if isinstance(default, tuple) else type(default))

    @property
    def dotted(self) -> str:
        """The key as messages name it: ``imds.deadline``, ``state_dir``."""
        return f"{self.table}.{self.name}" if self.table else self.name

    def __repr__(self) -> str:
        return f"Key({self.dotted!r}, {self.kind.__name__}, default={self.default!r})"


class Table:
    """One table of the file (``[imds]``), or the top level (name ``""``)."""

    __slots__ = ("any_key", "any_name", "keys", "meaning", "name")

    def __init__(
        self,
        name: str,
        meaning: str,
        keys: tuple[Key, ...],
        any_name: Check | None = None,
        any_key: Key | None = None,
    ) -> None:
        self.name = name
        self.meaning = meaning
        self.keys = keys
        # A table of free-form keys ([hooks.timeouts]): the check of their names, the rule of their values.
        self.any_name = any_name
        self.any_key = any_key


def _keys(table: str, defaults: Mapping[str, Any], **rules: Rule) -> tuple[Key, ...]:
    """The rows of ``table``, in the order of ``rules``, each with its default (and so its type) taken
    from ``defaults``: a section's fields."""
    return tuple(Key(table, name, defaults[name], rule) for name, rule in rules.items())


DEFAULTS = Config()
_TOP = _keys(
    "",
    DEFAULTS._asdict(),
    state_dir=Rule("holds state.db, the run lock and the last-check stamp", check=NOT_EMPTY),
    dry_run=Rule("decide and log everything, change nothing (as drainer --dry-run)"),
    disabled_file=Rule("kill switch: while this file exists drainer does nothing on its own"),
)
_VM = _keys(
    "vm",
    {"name": DEFAULTS.vm_name},
    name=Rule("this VM's name in Scheduled Events; empty: compute.name from instance metadata"),
)
_IMDS = _keys(
    "imds",
    ImdsConfig()._asdict(),
    endpoint=Rule("base URL of the Instance Metadata Service (never through a proxy)", check=ENDPOINT),
    api_version=Rule("api-version of /metadata/scheduledevents"),
    instance_api_version=Rule("api-version of /metadata/instance"),
    connect_timeout=Rule("seconds to wait for a connection, per attempt", 0.1, 60),
    read_timeout=Rule("seconds to wait for an answer, per attempt", 0.1, 300),
    deadline=Rule("seconds one call may take, retries included; at least connect_timeout", 0.1, 3600),
    max_body_bytes=Rule("a larger answer is refused as malformed", 1024, 1 << 30),
)
_POLICY = _keys(
    "policy",
    PolicyConfig()._asdict(),
    freeze_min_duration_seconds=Rule("a Freeze known to be shorter than this does not drain", 0, _DAY),
    lead_time_seconds=Rule("0: act at once; N: act once NotBefore is at most N seconds away", 0, 7 * _DAY),
    retention_days=Rule("days a cleared event is kept (status, history, reappearances)", 1, 3650),
    retry_max_seconds=Rule("the longest backoff between retries of a failed action (0: every run)", 0, 3600),
    reconcile_interval_seconds=Rule(
        "converge with Azure at most this often while idle (0: only at boot and after a lost state)",
        0,
        7 * _DAY,
    ),
    reconcile_active_seconds=Rule("... and this often while an event concerns the VM or it is out", 0, _DAY),
    force_before_seconds=Rule("this close to NotBefore (or Started), drain even below the floor", 0, _DAY),
    recovered_grace_seconds=Rule(
        'restore_when = "recovered": the restore gate must pass this long before the VM goes back', 0, _DAY
    ),
    stall_seconds=Rule("the daemon counts a poll this many seconds late as a stall (an impact)", 0.5, 3600),
)
_ACTIONS = _keys(
    "policy.actions",
    PolicyConfig().actions,
    **{t: Rule(f"a {t}: leave rotation, or record it only", choices=ACTIONS) for t in KNOWN_TYPES},
)
_RESTORE_WHEN = _keys(
    "policy.restore_when",
    PolicyConfig().restore_when,
    **{
        t: Rule(f"after a {t}: once no longer listed", choices=("cleared",))
        if t in _ENDS_VM
        else Rule(f"after a {t}: once no longer listed, or once its impact is over", choices=RESTORE_WHEN)
        for t in KNOWN_TYPES
    },
)
_DRAIN = _keys(
    "drain",
    DrainConfig()._asdict(),
    method=Rule("NIC pool references, adminState Down, a failing probe, or only log", choices=DRAIN_METHODS),
    min_in_service=Rule(
        "the floor: an early drain leaves at least this many other members of each pool in service, "
        'decided from the pools (0: none); a number, or a table pool -> floor with "*" for the others',
        check=FLOORS,
        of=object,
        shown=floors_shown,
    ),
    max_unavailable=Rule("VMs of a pool out at once by drainer's choice (0: no limit)", 0, 1000),
    application_gateways=Rule('also Application Gateway pool references ("nic" only)'),
    nics=Rule("the NICs to drain, by name or id; empty: those attached to this VM", check=NICS),
    gone_after_reads=Rule(
        "a NIC, load balancer or pool answering 404 leaves a restore after this many ...", 1, 1000
    ),
    gone_after_seconds=Rule("... over at least this many seconds", 0, 30 * _DAY),
    record_key=Rule(
        "the key drainer signs its records on the NICs with (and the drain counter beside it), outside "
        'the state dir; "": <state_dir>-record/record.key'
    ),
)
_AZURE = _keys(
    "azure",
    AzureConfig()._asdict(),
    arm_endpoint=Rule("Azure Resource Manager", check=ARM_ENDPOINT),
    identity=Rule("the VM's managed identity, or DefaultAzureCredential", choices=IDENTITIES),
    client_id=Rule("a user-assigned managed identity's client id; empty: the system-assigned one"),
    poll_interval=Rule("seconds between polls of a long-running write", 0.05, 60),
    deadline=Rule("seconds one drain or restore may spend on ARM, retries included", 1, 3600),
    connect_timeout=Rule("seconds to wait for a connection, per request", 0.1, 120),
    read_timeout=Rule("seconds to wait for an answer, per request", 0.1, 600),
    max_calls_per_second=Rule("requests per second, per process (0: no limit) ...", 0, 1000),
    max_call_burst=Rule("... in bursts of at most this many (a drain takes about 6 per NIC)", 1, 100_000),
)
_FLEET = _keys(
    "fleet",
    FleetConfig()._asdict(),
    claim_seconds=Rule("an intent counts at most this long from when a VM first saw it", 30, _DAY),
    spread_seconds=Rule("early drains and restores start after a random delay of up to this", 0, 600),
)
_APPROVAL = _keys(
    "approval",
    ApprovalConfig()._asdict(),
    enabled=Rule("approve maintenance early (StartRequests) once out of rotation"),
    types=Rule("the event types approved early", check=EVENT_TYPES),
    service_ports=Rule(
        'local TCP ports whose established connections must end first ("auto": every port this VM listens '
        "on beyond loopback, except SSH and drainer's own; []: wait for none) ...",
        check=SERVICE_PORTS,
        of=object,
    ),
    drain_timeout=Rule("... or this many seconds after the VM left rotation", 0, _DAY),
    near_seconds=Rule("this close to NotBefore nothing is approved", 0, _DAY),
    slot_seconds=Rule("the listed VMs approve in name order, one slot of this many seconds apart", 0, 3600),
    when_not_drained=Rule("approve even after a failed or held drain (not recommended)"),
    peer_check_interval=Rule("seconds between reads of the other listed VMs' pools", 0, 3600),
    approve_ignored=Rule("approve at once an ignored event listing this VM alone"),
    approve_user=Rule('approve once drained an EventSource "User" event listing this VM alone'),
)
_RESTORE = _keys(
    "restore",
    RestoreConfig()._asdict(),
    health_url=Rule("the VM goes back only once this answers 2xx ...", check=OPTIONAL_ENDPOINT),
    health_command=Rule("... and this argv (no shell) exits 0; empty: none", check=ARGV),
    health_timeout=Rule("after this many seconds of failing checks it goes back anyway", 0, _DAY),
)
_HOOKS = _keys(
    "hooks",
    HooksConfig()._asdict(),
    dir=Rule("holds the phase directories (on-event, pre-drain, post-drain, ...)"),
    timeout=Rule("seconds a hook may run, then SIGTERM to its process group", 0.1, _DAY),
    kill_grace=Rule("seconds from that SIGTERM to SIGKILL", 0, 600),
    on_failure=Rule("a failing pre-drain hook aborts the drain, or not", choices=ON_FAILURE),
    output_limit=Rule("bytes of stdout and of stderr kept per run (head and tail)", 256, 1 << 24),
)
_DAEMON = _keys(
    "daemon",
    DaemonConfig()._asdict(),
    poll_interval=Rule("seconds between checks (a Spot eviction gives 30 s of notice)", 0.1, 3600),
    stop_timeout=Rule("on SIGTERM, the running check gets this long to finish", 0, 3600),
    error_log_interval=Rule("the same error is logged once, then at most this often", 0, _DAY),
    shed_sdk_after=Rule(
        "after this many seconds in rotation with nothing to do, the daemon re-executes itself (same pid, "
        "its listening sockets kept) to free the Azure SDK's memory; 0: never",
        0,
        7 * _DAY,
    ),
)
_METRICS = _keys(
    "metrics",
    MetricsConfig()._asdict(),
    enabled=Rule("Prometheus metrics"),
    address=Rule("the daemon's /metrics and /healthz (keep it on loopback)", check=ADDRESS),
    textfile=Rule("one-shot: also write this node_exporter textfile; empty: none"),
)
_PROBE = _keys(
    "probe",
    ProbeConfig()._asdict(),
    address=Rule("the daemon answers the load balancer's health probe here ...", check=ADDRESS),
    path=Rule("... on this path: 200 in rotation, 503 while drained", check=URL_PATH),
    flag_file=Rule("exists while the VM is out of rotation"),
    takedown_seconds=Rule(
        "early approval waits this long after the VM left rotation: the load balancer stops sending new "
        "connections only once its probe failed (threshold x interval; 2 x 5 s by default, doubled)",
        0,
        3600,
    ),
)
_LOGGING = _keys(
    "logging",
    LoggingConfig()._asdict(),
    format=Rule("auto: console lines on a terminal, JSON otherwise", choices=LOG_FORMATS),
    level=Rule("the lowest level logged", choices=LOG_LEVELS),
    syslog=Rule("also send every record to syslog"),
    syslog_address=Rule("syslog's Unix socket, or host:port (UDP)"),
    eventlog=Rule("also write to the Windows Event Log", check=WINDOWS_ONLY),
)
_RETENTION = _keys(
    "retention",
    RetentionConfig()._asdict(),
    cleared_events=Rule("the newest this many cleared events are kept", 1, 10_000_000),
    history_days=Rule("history lines younger than this many days are kept ...", 1, 100 * 365),
    history_rows=Rule("... at most this many (the newest)", 10, 100_000_000),
)
_HOOK_TIMEOUT = Key(
    "hooks.timeouts", "<phase>/<hook name>", None, Rule("seconds this hook may run", 0.1, _DAY), float
)

TABLES = (
    Table("", "the state, a dry run for everything, and the kill switch", _TOP),
    Table("vm", "this VM", _VM),
    Table("imds", "the Instance Metadata Service", _IMDS),
    Table("policy", "when events are acted on, retried, reconciled, forced", _POLICY),
    Table("policy.actions", "per event type (an unknown type always drains)", _ACTIONS),
    Table(
        "policy.restore_when", "per event type: when the VM goes back (README: restore_when)", _RESTORE_WHEN
    ),
    Table("drain", "how the VM leaves rotation, and the pools' floor", _DRAIN),
    Table("azure", "Azure Resource Manager", _AZURE),
    Table("fleet", "the floor coordinated across VMs (README: the fleet model)", _FLEET),
    Table("approval", "approving maintenance early", _APPROVAL),
    Table("restore", "the health check before the VM goes back", _RESTORE),
    Table("hooks", "programs run in each phase (README: Hooks)", _HOOKS),
    Table("hooks.timeouts", "per-hook timeouts instead of [hooks] timeout", (), HOOK_NAME, _HOOK_TIMEOUT),
    Table("daemon", "the daemon, `drainer run`", _DAEMON),
    Table("metrics", "Prometheus metrics", _METRICS),
    Table("probe", 'the health probe\'s answer for method = "probe", and a flag file', _PROBE),
    Table("logging", "where and how much drainer logs", _LOGGING),
    Table("retention", "how much state.db keeps", _RETENTION),
)
# The top level's tables (sections), in the order config.example.toml documents them.
SECTIONS = tuple(t.name for t in TABLES if t.name and "." not in t.name)
# The sections' types by table name; the top level and [vm] fill Config's own fields.
SECTION_TYPES: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {name: type(getattr(DEFAULTS, name)) for name in SECTIONS if name != "vm"}
)
