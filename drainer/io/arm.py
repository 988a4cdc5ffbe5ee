"""Azure Resource Manager access for the load-balancer drain: identity, the network client, and the
few calls drainer makes, each bounded by one deadline.

Imported only when there is something to drain or restore: the Azure SDK costs the idle run nothing.

- Identity: ``ManagedIdentityCredential`` (system-assigned, or user-assigned by ``client_id``) whose
  token comes from the configured IMDS endpoint, never through a proxy; or ``DefaultAzureCredential``.
- Plain http is allowed only for a loopback ARM endpoint (the emulator); the config refuses it
  elsewhere, and the bearer-token policy is told so only for loopback URLs.
- The token goes to the configured ARM endpoint only, and answers are size-capped
  (``drainer.io.armguard``).
- SDK retries (429 with ``Retry-After``, ``RetryableErrorDueToAnotherOperation``, 5xx) never sleep past
  the deadline; long-running operations are polled at ``poll_interval`` and waited for only until it;
  and every exchange (the managed-identity token's too) ends by it, however slowly its answer drips
  (``drainer.io.deadline``).
- Retries are jittered (``Retry-After`` plus up to half of it again; backoff with full jitter), so a
  fleet throttled together does not come back together; every HTTP request to ARM, retries and
  operation polls included, takes a token from one process-wide bucket (``[azure]
  max_calls_per_second``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies import HTTPPolicy, RetryPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.mgmt.core.exceptions import ARMErrorFormat
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import (
    ApplicationGateway,
    ApplicationSecurityGroup,
    BackendAddressPool,
    LoadBalancer,
    NetworkInterface,
)

from drainer.base import metrics
from drainer.base.errors import ActionError
from drainer.config import AzureConfig, is_loopback
from drainer.io.armguard import ArmDeadlineError, ArmOnlyPolicy, ArmRefusedError, arm_session
from drainer.io.deadline import Deadline, DeadlineAdapter
from drainer.io.log import register_secret

# An answer nested deeper than Python's JSON parser goes (``RecursionError`` in the SDK's
# deserializer): one ARM error line, never a traceback. No real ARM resource is nested beyond a few
# dozen levels.
_TOO_DEEP = "an ARM answer nested too deeply to read (refused)"

# The SDK's own log lines would reach stderr through logging's last-resort handler: raw, unredacted
# and unescaped (an IMDS or ARM answer can carry anything). drainer reports SDK failures itself.
_SDK_LOG = logging.getLogger("azure")
_SDK_LOG.addHandler(logging.NullHandler())
_SDK_LOG.propagate = False

# The Microsoft.Compute api-version of the one Compute read (a VM's NICs): the version of the spec
# examples the emulator is shaped after (VirtualMachine_Get.json, 2024-07-01).
COMPUTE_API_VERSION = "2024-07-01"

# "The call can be retried in 14 seconds." (RetryableErrorDueToAnotherOperation, HTTP 429, no header)
_RETRY_IN = re.compile(r"retried in (\d+) seconds")


class ArmError(ActionError):
    """An ARM call failed. ``status`` and ``code`` come from Azure's error answer when there is one."""

    def __init__(self, what: str, reason: str, *, status: int | None = None, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(what, reason)


def _describe(exc: BaseException) -> tuple[str, int | None, str]:
    """A one-line reason, the HTTP status and Azure's error code."""
    if isinstance(exc, (ArmDeadlineError, ArmRefusedError)):
        return str(exc), None, ""
    if isinstance(exc, HttpResponseError):
        code = ""
        message = exc.message or str(exc)
        if exc.error is not None:
            code = exc.error.code or ""
            message = exc.error.message or message
            details = [f"{d.code}: {d.message}" for d in (exc.error.details or []) if d.code]
            if details:
                message = f"{message} ({'; '.join(details)})"
        status = exc.status_code
        if status is not None and status < 300:
            # A long-running operation that ended Failed: the poll itself answered 200.
            text = f"the operation failed: {code}: {message}" if code else f"the operation failed: {message}"
            return " ".join(text.split()), None, code
        text = f"HTTP {status} {code}: {message}" if code else f"HTTP {status}: {message}"
        return " ".join(text.split()), status, code
    return f"{type(exc).__name__}: {exc}".strip(), None, ""


class _DeadlineRetryPolicy(RetryPolicy[Any, Any]):
    """azure-core's retries (429 with Retry-After, 5xx, connection errors), never sleeping past
    ``deadline`` (started before each action)."""

    def __init__(self, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deadline = deadline

    def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        wait: float | None = None
        if response is not None:
            wait = self.get_retry_after(response)
            if wait is None and response.http_response.status_code == 429:
                found = _RETRY_IN.search(_body_text(response.http_response))
                wait = float(found.group(1)) if found else None
        if wait is None:
            # Full jitter: anywhere between no wait and the exponential backoff.
            wait = random.uniform(0, self.get_backoff_time(settings))  # noqa: S311 - a delay, not a secret  # nosec B311
        else:
            # At least what ARM asked for, plus up to half of it: a fleet throttled together spreads.
            wait += random.uniform(0, min(wait, 10.0) / 2)  # noqa: S311 - a delay, not a secret  # nosec B311
        if time.monotonic() + wait > self.deadline.at:
            raise ArmDeadlineError(f"the next retry (in {wait:g}s) would pass the ARM deadline")
        if wait > 0:
            transport.sleep(wait)


class RateLimiter:
    """A token bucket shared by every ARM request of this process (one VM: one drainer)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def wait_time(self) -> float:
        """Take a token; the seconds to wait before using it (0: at once)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, deadline: Deadline) -> None:
        """Wait for a token. Raises ArmDeadlineError when that would pass ``deadline``."""
        wait = self.wait_time()
        if wait > 0:
            if time.monotonic() + wait > deadline.at:
                raise ArmDeadlineError(
                    f"the ARM rate limit would delay the call past the deadline ({wait:.1f}s)"
                )
            time.sleep(wait)


_LIMITERS: dict[tuple[float, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def rate_limiter(rate: float, burst: int) -> RateLimiter:
    """The process-wide limiter for ``rate`` calls per second in bursts of ``burst`` (at least 1)."""
    with _LIMITERS_LOCK:
        key = (rate, max(1.0, float(burst)))
        if key not in _LIMITERS:
            _LIMITERS[key] = RateLimiter(*key)
        return _LIMITERS[key]


class _RateLimitPolicy(HTTPPolicy[Any, Any]):
    """Every request of the pipeline (retries and operation polls too) waits for the process-wide
    bucket."""

    def __init__(self, limiter: RateLimiter, retry: _DeadlineRetryPolicy) -> None:
        super().__init__()
        self.limiter = limiter
        self.retry = retry

    def send(self, request: Any) -> Any:
        self.limiter.acquire(self.retry.deadline)
        return self.next.send(request)


def _count_response(response: Any) -> None:
    metrics.current.inc("arm_requests", {"status": str(response.http_response.status_code)})


def _body_text(http_response: Any) -> str:
    """The body of an error answer, reading it first if the call streamed (LRO initial requests do)."""
    try:
        http_response.read()
        return str(http_response.text())
    except (AzureError, ValueError, OSError):
        return ""


def _imds_session(deadline: Deadline | None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # the managed-identity token comes from IMDS: never through a proxy
    if deadline is not None:
        # The token is fetched within an action (the first ARM call asks for it): its deadline holds.
        adapter = DeadlineAdapter(deadline)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


class _Registered:
    """A token credential whose every token is registered for masking by value (``register_secret``)
    as it is obtained: an ARM error, a proxy or a bug that quotes it back never brings it to a log,
    stderr, ``last-failure.json`` or ``state.db``, whatever its shape."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token: AccessToken = self._inner.get_token(*scopes, **kwargs)
        register_secret(token.token)
        return token

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        # azure-core's bearer policy prefers get_token_info when a credential has it.
        getter = getattr(self._inner, "get_token_info", None)
        if getter is None:
            token = self.get_token(*scopes)
            return AccessTokenInfo(token.token, token.expires_on)
        info: AccessTokenInfo = getter(*scopes, options=options)
        register_secret(info.token)
        return info

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def make_credential(cfg: AzureConfig, imds_endpoint: str, deadline: Deadline | None = None) -> Any:
    """The token credential ``cfg.identity`` asks for, its tokens registered for masking; its IMDS
    exchanges end by ``deadline`` if given."""
    return _Registered(_credential(cfg, imds_endpoint, deadline))


def _credential(cfg: AzureConfig, imds_endpoint: str, deadline: Deadline | None) -> Any:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential  # noqa: PLC0415

    if cfg.identity == "default":
        # Without its managed-identity step: that one would ask IMDS through the environment's
        # proxy. On a VM, identity = "managed" reaches IMDS directly.
        return DefaultAzureCredential(exclude_managed_identity_credential=True)
    # azure-identity reads the IMDS authority only from this variable (FACTS: "can be pointed at
    # another IMDS host with AZURE_POD_IDENTITY_AUTHORITY_HOST"). drainer's configured endpoint wins
    # over whatever the inherited environment says.
    os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = imds_endpoint
    transport = RequestsTransport(session=_imds_session(deadline), session_owner=True)
    if cfg.client_id:
        return ManagedIdentityCredential(client_id=cfg.client_id, transport=transport)
    return ManagedIdentityCredential(transport=transport)


class Network(Protocol):
    """The ARM network calls a drain method makes. Reads and writes raise ArmError."""

    @property
    def calls(self) -> int: ...

    def start(self) -> None: ...
    def list_nics(self, resource_group: str) -> list[NetworkInterface]: ...
    def get_nic(self, resource_group: str, name: str) -> NetworkInterface: ...
    def get_scale_set_nic(
        self, resource_group: str, scale_set: str, index: str, name: str
    ) -> NetworkInterface: ...
    def get_vm_nics(self, resource_id: str) -> list[str]: ...
    def get_load_balancer(self, resource_group: str, name: str) -> LoadBalancer: ...
    def list_load_balancers(self, resource_group: str) -> list[LoadBalancer]: ...
    def list_all_nics(self) -> list[NetworkInterface]: ...
    def list_all_load_balancers(self) -> list[LoadBalancer]: ...
    def get_app_gateway(self, resource_group: str, name: str) -> ApplicationGateway: ...
    def get_asg(self, resource_group: str, name: str) -> ApplicationSecurityGroup: ...
    def put_asg(
        self, resource_group: str, name: str, asg: ApplicationSecurityGroup
    ) -> ApplicationSecurityGroup: ...
    def put_nic(self, resource_group: str, name: str, nic: NetworkInterface) -> NetworkInterface: ...
    def put_pool(
        self, resource_group: str, lb: str, name: str, pool: BackendAddressPool
    ) -> BackendAddressPool: ...


class ArmNetwork:
    """``Network`` over the real ``azure-mgmt-network`` client."""

    def __init__(self, cfg: AzureConfig, *, subscription_id: str, imds_endpoint: str) -> None:
        self.cfg = cfg
        self._calls = 0
        # One deadline per action (``start``): its retries, waits, operation polls and every socket
        # operation of its exchanges end by it.
        self._deadline = Deadline(cfg.deadline)
        self._retry = _DeadlineRetryPolicy(
            self._deadline, retry_total=10, retry_backoff_factor=0.5, retry_backoff_max=30
        )
        host = urlsplit(cfg.arm_endpoint).hostname
        # Bearer tokens over plain http only to a loopback emulator (the config refuses it elsewhere).
        self._call_options: dict[str, Any] = {"enforce_https": False} if is_loopback(host) else {}
        self._client = NetworkManagementClient(
            make_credential(cfg, imds_endpoint, self._deadline),
            subscription_id,
            base_url=cfg.arm_endpoint,
            credential_scopes=[cfg.arm_endpoint.rstrip("/") + "/.default"],
            retry_policy=self._retry,
            per_retry_policies=[
                _RateLimitPolicy(rate_limiter(cfg.max_calls_per_second, cfg.max_call_burst), self._retry)
            ]
            if cfg.max_calls_per_second > 0
            else [],
            custom_hook_policy=ArmOnlyPolicy(cfg.arm_endpoint),
            transport=RequestsTransport(
                session=arm_session(self._deadline),
                session_owner=True,
                connection_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
            ),
            connection_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            polling_interval=cfg.poll_interval,
        )

    @property
    def calls(self) -> int:
        """ARM operations started (each may be several HTTP requests: retries, LRO polls)."""
        return self._calls

    def start(self) -> None:
        """Begin a new action: its ARM calls share one deadline from now."""
        self._deadline.start()

    def _remaining(self) -> float:
        return self._deadline.remaining()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._remaining() <= 0:
            raise ArmError(what, f"ARM deadline of {self.cfg.deadline:g}s passed")
        self._calls += 1
        try:
            return fn(*args, **self._call_options, raw_response_hook=_count_response, **kwargs)
        except (AzureError, ArmDeadlineError, ArmRefusedError) as exc:
            raise self._failed(what, exc) from exc
        except RecursionError as exc:
            raise ArmError(what, _TOO_DEEP) from exc

    def _wait(self, what: str, poller: Any) -> Any:
        try:
            poller.wait(timeout=max(0.0, self._remaining()))
            if not poller.done():
                limit = f"{self.cfg.deadline:g} s"
                raise ArmError(what, f"the operation did not finish within the {limit} deadline")
            return poller.result()
        except (AzureError, ArmDeadlineError, ArmRefusedError) as exc:
            raise self._failed(what, exc) from exc
        except RecursionError as exc:
            raise ArmError(what, _TOO_DEEP) from exc

    def _failed(self, what: str, exc: BaseException) -> ArmError:
        """The ArmError for ``exc``. An exchange cut short by the deadline (a connect or a read that
        could not finish in time, through the retries too) says so, whatever layer noticed it."""
        cut_short = isinstance(exc, (ArmDeadlineError, ServiceRequestError, ServiceResponseError))
        if cut_short and self._deadline.passed():
            return ArmError(what, f"ARM did not complete within the {self.cfg.deadline:g} s deadline")
        reason, status, code = _describe(exc)
        return ArmError(what, reason, status=status, code=code)

    def get_json(self, path: str, api_version: str) -> dict[str, Any]:
        """GET ``path`` (an ARM path, or an absolute ``nextLink`` on the ARM endpoint) through this
        client's pipeline: the same credential, token guard, rate limit and deadline-bound retries.
        For ARM reads the generated client has no operation for (the permissions API). Azure-core's
        documented way to send a request through a client's pipeline is ``send_request``
        (https://aka.ms/azsdk/dpcodegen/python/send_request). Raises ArmError."""
        from azure.core.rest import HttpRequest  # noqa: PLC0415
        from azure.mgmt.core.exceptions import ARMErrorFormat  # noqa: PLC0415

        what = f"read {path.split('?', 1)[0]}"
        params = {} if "api-version=" in path else {"api-version": api_version}
        request = HttpRequest("GET", path, params=params, headers={"Accept": "application/json"})

        def send(**kwargs: Any) -> Any:
            response = self._client.send_request(request, **kwargs)
            if response.status_code >= 400:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            try:
                return response.json()
            except ValueError as exc:
                raise ArmError(what, "the answer is not JSON") from exc

        result = self._call(what, send)
        if not isinstance(result, dict):
            raise ArmError(what, "the answer is not a JSON object")
        return result

    def list_nics(self, resource_group: str) -> list[NetworkInterface]:
        what = f"list NICs of {resource_group}"
        return list(
            self._call(what, lambda **kw: list(self._client.network_interfaces.list(resource_group, **kw)))
        )

    def get_nic(self, resource_group: str, name: str) -> NetworkInterface:
        result: NetworkInterface = self._call(
            f"read NIC {name}", self._client.network_interfaces.get, resource_group, name
        )
        return result

    def get_scale_set_nic(
        self, resource_group: str, scale_set: str, index: str, name: str
    ) -> NetworkInterface:
        """A scale-set Uniform instance's NIC (read-only to the network API, under the Compute provider)."""
        result: NetworkInterface = self._call(
            f"read NIC {name} of {scale_set}/{index}",
            self._client.network_interfaces.get_virtual_machine_scale_set_network_interface,
            resource_group,
            scale_set,
            index,
            name,
        )
        return result

    def get_vm_nics(self, resource_id: str) -> list[str]:
        """The NIC ids of a VM resource (``properties.networkProfile.networkInterfaces``): one small
        Microsoft.Compute GET (a VM, or a scale-set Uniform instance's
        ``virtualMachineScaleSets/{ss}/virtualMachines/{id}``), sent through the network client's
        pipeline: the same credential, token-destination guard, rate limit, retries and deadline, and
        no azure-mgmt-compute dependency. Raises ArmError (404 when the VM does not exist)."""
        what = f"read VM {resource_id.rsplit('/', 1)[-1]}"
        request = HttpRequest("GET", "{endpoint}" + resource_id, params={"api-version": COMPUTE_API_VERSION})

        def get(**kwargs: Any) -> Any:
            response = self._client.send_request(request, **kwargs)
            if response.status_code != 200:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            return response.json()

        body = self._call(what, get)
        profile = (body.get("properties") or {}).get("networkProfile") or {}
        return [str(n["id"]) for n in profile.get("networkInterfaces") or [] if n.get("id")]

    def get_load_balancer(self, resource_group: str, name: str) -> LoadBalancer:
        result: LoadBalancer = self._call(
            f"read load balancer {name}", self._client.load_balancers.get, resource_group, name
        )
        return result

    def list_load_balancers(self, resource_group: str) -> list[LoadBalancer]:
        what = f"list load balancers of {resource_group}"
        return list(
            self._call(what, lambda **kw: list(self._client.load_balancers.list(resource_group, **kw)))
        )

    def list_all_nics(self) -> list[NetworkInterface]:
        what = "list the subscription's NICs"
        return list(self._call(what, lambda **kw: list(self._client.network_interfaces.list_all(**kw))))

    def list_all_load_balancers(self) -> list[LoadBalancer]:
        what = "list the subscription's load balancers"
        return list(self._call(what, lambda **kw: list(self._client.load_balancers.list_all(**kw))))

    def get_app_gateway(self, resource_group: str, name: str) -> ApplicationGateway:
        result: ApplicationGateway = self._call(
            f"read application gateway {name}", self._client.application_gateways.get, resource_group, name
        )
        return result

    def get_asg(self, resource_group: str, name: str) -> ApplicationSecurityGroup:
        result: ApplicationSecurityGroup = self._call(
            f"read lease {name}", self._client.application_security_groups.get, resource_group, name
        )
        return result

    def put_asg(
        self, resource_group: str, name: str, asg: ApplicationSecurityGroup
    ) -> ApplicationSecurityGroup:
        result: ApplicationSecurityGroup = self._put(
            f"write lease {name}",
            self._client.application_security_groups.begin_create_or_update,
            resource_group,
            name,
            resource=asg,
        )
        return result

    def _put(self, what: str, begin: Any, *args: Any, resource: Any) -> Any:
        """A long-running PUT with If-Match (the etag it was read with), waited for within the deadline."""
        poller = self._call(
            what,
            begin,
            *args,
            resource,
            headers={"If-Match": resource.etag} if resource.etag else {},
            polling_interval=self.cfg.poll_interval,
        )
        return self._wait(what, poller)

    def put_nic(self, resource_group: str, name: str, nic: NetworkInterface) -> NetworkInterface:
        result: NetworkInterface = self._put(
            f"write NIC {name}",
            self._client.network_interfaces.begin_create_or_update,
            resource_group,
            name,
            resource=nic,
        )
        return result

    def put_pool(
        self, resource_group: str, lb: str, name: str, pool: BackendAddressPool
    ) -> BackendAddressPool:
        result: BackendAddressPool = self._put(
            f"write backend pool {lb}/{name}",
            self._client.load_balancer_backend_address_pools.begin_create_or_update,
            resource_group,
            lb,
            name,
            resource=pool,
        )
        return result


class DryRunNetwork:
    """Wraps a ``Network``: reads go through, every write is logged and not made."""

    def __init__(self, inner: Network, log: Any) -> None:
        self.inner = inner
        self.log = log

    @property
    def calls(self) -> int:
        return self.inner.calls

    def start(self) -> None:
        self.inner.start()

    def list_nics(self, resource_group: str) -> list[NetworkInterface]:
        return self.inner.list_nics(resource_group)

    def get_nic(self, resource_group: str, name: str) -> NetworkInterface:
        return self.inner.get_nic(resource_group, name)

    def get_scale_set_nic(
        self, resource_group: str, scale_set: str, index: str, name: str
    ) -> NetworkInterface:
        return self.inner.get_scale_set_nic(resource_group, scale_set, index, name)

    def get_vm_nics(self, resource_id: str) -> list[str]:
        return self.inner.get_vm_nics(resource_id)

    def get_load_balancer(self, resource_group: str, name: str) -> LoadBalancer:
        return self.inner.get_load_balancer(resource_group, name)

    def list_load_balancers(self, resource_group: str) -> list[LoadBalancer]:
        return self.inner.list_load_balancers(resource_group)

    def list_all_nics(self) -> list[NetworkInterface]:
        return self.inner.list_all_nics()

    def list_all_load_balancers(self) -> list[LoadBalancer]:
        return self.inner.list_all_load_balancers()

    def get_app_gateway(self, resource_group: str, name: str) -> ApplicationGateway:
        return self.inner.get_app_gateway(resource_group, name)

    def get_asg(self, resource_group: str, name: str) -> ApplicationSecurityGroup:
        return self.inner.get_asg(resource_group, name)

    def put_asg(
        self, resource_group: str, name: str, asg: ApplicationSecurityGroup
    ) -> ApplicationSecurityGroup:
        self.log.warning("dry-run: would write the fleet lease", lease=name, tags_after=asg.tags)
        return asg

    def put_nic(self, resource_group: str, name: str, nic: NetworkInterface) -> NetworkInterface:
        pools = {
            config.name: [p.id for p in config.load_balancer_backend_address_pools or []]
            + [p.id for p in config.application_gateway_backend_address_pools or []]
            for config in nic.ip_configurations or []
        }
        self.log.warning("dry-run: would write NIC", nic=name, if_match=nic.etag, pools_after=pools)
        return nic

    def put_pool(
        self, resource_group: str, lb: str, name: str, pool: BackendAddressPool
    ) -> BackendAddressPool:
        states = {a.name: a.admin_state for a in pool.load_balancer_backend_addresses or []}
        self.log.warning(
            "dry-run: would write backend pool",
            pool=f"{lb}/{name}",
            if_match=pool.etag,
            admin_states_after=states,
        )
        return pool
