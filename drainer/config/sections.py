"""The configuration's typed, frozen sections: what the rest of drainer reads (``config.imds.deadline``).

The sections are NamedTuples (immutable and typed like frozen dataclasses, but several times cheaper to
define, which the every-minute idle run pays for at start-up). Each field's default is the key's
default, written here and nowhere else; what each key means and allows is in the table beside them
(``drainer.config.schema``), and docs/configuration.md is generated from both.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from drainer.base.events import EventType

DEFAULT_CONFIG_PATH = "/etc/drainer/config.toml"
DEFAULT_STATE_DIR = "/var/lib/drainer"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_HOOKS_DIR = "/etc/drainer/hooks.d"
DEFAULT_DISABLED_FILE = "/etc/drainer/disabled"

# An unknown event type always holds the VM (it is not configurable).
KNOWN_TYPES = tuple(t.value for t in EventType if t is not EventType.UNKNOWN)


class ImdsConfig(NamedTuple):
    endpoint: str = DEFAULT_IMDS_ENDPOINT
    api_version: str = "2020-07-01"
    instance_api_version: str = "2021-02-01"
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    deadline: float = 30.0
    max_body_bytes: int = 1_048_576


class PolicyConfig(NamedTuple):
    # [policy.actions]: EventType value -> "drain" | "ignore"
    actions: Mapping[str, str] = MappingProxyType(dict.fromkeys(KNOWN_TYPES, "drain"))
    freeze_min_duration_seconds: int = 30
    lead_time_seconds: int = 0
    retention_days: int = 30
    retry_max_seconds: int = 60
    reconcile_interval_seconds: int = 1800
    reconcile_active_seconds: int = 300
    force_before_seconds: int = 120
    # [policy.restore_when]: EventType value -> "cleared" | "recovered". Microsoft documents the event's
    # removal as the signal to recover, and a second impact while it is Started (README
    # "restore_when"): "cleared" for every type unless the operator opts in.
    restore_when: Mapping[str, str] = MappingProxyType(dict.fromkeys(KNOWN_TYPES, "cleared"))
    recovered_grace_seconds: int = 60
    stall_seconds: float = 5.0

    def action_for(self, event_type: EventType) -> str:
        return self.actions.get(event_type.value, "drain")


class DrainConfig(NamedTuple):
    method: str = "nic"
    # Per pool: pool id, "<load balancer>/<pool>" or pool name -> floor, "*" for the others (1 when not
    # given); a single number N in the file is {"*": N} (drainer.decide.intents.floor_for).
    min_in_service: Mapping[str, int] = MappingProxyType({"*": 1})
    max_unavailable: int = 0
    application_gateways: bool = False
    nics: tuple[str, ...] = ()
    gone_after_reads: int = 3
    gone_after_seconds: int = 300
    # The key drainer signs its records on the NICs with (a drain counter lives beside it). Outside
    # the state dir; empty: "<state_dir>-record/record.key" (drainer.io.recordkey).
    record_key: str = ""


class ApprovalConfig(NamedTuple):
    enabled: bool = True
    types: tuple[str, ...] = ("Reboot", "Redeploy", "Freeze", "Terminate")
    # "auto": this VM's listening TCP ports (not SSH, loopback-only or drainer's own); (): none.
    service_ports: tuple[int, ...] | str = "auto"
    drain_timeout: float = 300.0
    near_seconds: float = 60.0
    when_not_drained: bool = False
    peer_check_interval: float = 30.0
    slot_seconds: float = 20.0
    approve_ignored: bool = True
    approve_user: bool = True


class FleetConfig(NamedTuple):
    # An intent (a VM announcing it leaves its pools) counts at most this long from when a VM first
    # saw it, whatever expiry it states: a VM that died after announcing blocks no one longer.
    claim_seconds: int = 900
    spread_seconds: float = 5.0


class RestoreConfig(NamedTuple):
    health_url: str = ""
    health_command: tuple[str, ...] = ()
    health_timeout: float = 300.0


class DaemonConfig(NamedTuple):
    poll_interval: float = 1.0
    stop_timeout: float = 20.0
    error_log_interval: float = 600.0
    shed_sdk_after: float = 600.0


class MetricsConfig(NamedTuple):
    enabled: bool = False
    address: str = "127.0.0.1:9839"
    textfile: str = ""


class ProbeConfig(NamedTuple):
    address: str = "0.0.0.0:8088"
    path: str = "/drainer/ready"
    flag_file: str = "/run/drainer/out-of-rotation"
    # Early approval waits this long after the VM left rotation: the load balancer stops sending new
    # connections only once its probe failed ``threshold`` times ``interval`` apart (the portal's
    # defaults: 5 s, 2); twice that by default, for a probe answered just before the flag was set.
    takedown_seconds: float = 20.0


class HooksConfig(NamedTuple):
    dir: str = DEFAULT_HOOKS_DIR
    timeout: float = 60.0
    kill_grace: float = 5.0
    on_failure: str = "abort"
    output_limit: int = 8192
    # [hooks.timeouts]: "phase/name" -> seconds, overriding ``timeout`` for one hook.
    timeouts: Mapping[str, float] = MappingProxyType({})


class AzureConfig(NamedTuple):
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    identity: str = "managed"
    client_id: str = ""
    poll_interval: float = 1.0
    deadline: float = 120.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_calls_per_second: float = 5.0
    max_call_burst: int = 40


class RetentionConfig(NamedTuple):
    cleared_events: int = 1000
    history_days: int = 365
    history_rows: int = 20000


class LoggingConfig(NamedTuple):
    format: str = "auto"
    level: str = "info"
    syslog: bool = False
    syslog_address: str = "/dev/log"
    eventlog: bool = False


class Config(NamedTuple):
    source: str = "<defaults>"  # the file it was read from
    vm_name: str = ""  # [vm] name
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
    disabled_file: str = DEFAULT_DISABLED_FILE
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()
