"""HTTP front of the emulator: IMDS routes as Azure serves them, plus a control API under
``/_emulator/`` to script scenarios.

IMDS routes (an optional ``/vm/<name>`` prefix selects which VM is asking; without it, the first VM):
  GET  /metadata/scheduledevents?api-version=...
  POST /metadata/scheduledevents?api-version=...      {"StartRequests": [{"EventId": ...}]}
  GET  /metadata/instance?api-version=...
  GET  /metadata/identity/oauth2/token?api-version=...&resource=...

Control routes (JSON in, JSON out):
  GET    /_emulator/state                     incarnation, events, approvals, VMs
  GET    /_emulator/requests                  every request seen (method, path, headers of interest)
  POST   /_emulator/events                    {"type", "resources", "status"?, "not_before_in"?,
                                               "duration"?, "event_id"?, "description"?,
                                               "maintenance_seconds"? (the impact), "linger_seconds"?,
                                               "second_impact_after"?, "second_impact_seconds"?}
  POST   /_emulator/events/<id>/start         Scheduled -> Started
  DELETE /_emulator/events/<id>               complete or cancel (the event disappears)
  PUT    /_emulator/document                  serve this body verbatim (any bytes) until DELETE
  DELETE /_emulator/document
  POST   /_emulator/faults                    {"match", "status", "count", "body", "delay",
                                               "retry_after", "reset", "method", "drip",
                                               "echo_token"}  (match: a substring of the path, or
                                               its end when it ends with "$"; drip: the usual
                                               answer, its body one byte every that many seconds;
                                               echo_token: "%TOKEN%" in the body is replaced by
                                               the caller's bearer token)
  DELETE /_emulator/faults                    (answers dripping now end too)
  POST   /_emulator/etags                     {"on": bool}  ETag/304 on scheduled events (default on)
  POST   /_emulator/incarnation               {"value": N}  (service re-enabled)
  POST   /_emulator/vms                       {"name", "scale_set"?}
  POST   /_emulator/vms/<name>/boot-id-file   {"path"}: play the VM's boot id there (new at each reboot)
  POST   /_emulator/vms/<name>/identity       {"system_assigned": bool, "user_assigned": [client ids] | null}:
                                              its managed identities (none: the token endpoint answers
                                              400 "Identity not found", as IMDS does)
  POST   /_emulator/nodes                     {"node", "vms"}: these VMs share a host node (an approval
                                              starts their events once all of them approved)
  POST   /_emulator/reset
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from drainer.emulator.arm_model import ArmError, ArmSettings, Mutation
from drainer.emulator.imds_model import (
    IDENTITY_NOT_FOUND,
    INSTANCE_VERSIONS,
    MISSING_API_VERSION,
    SCHEDULED_EVENTS_VERSIONS,
    TOKEN_VERSIONS,
    Fault,
    ImdsModel,
)

CONTROL = "/_emulator"


class _Handler(BaseHTTPRequestHandler):
    server: EmulatorServer
    protocol_version = "HTTP/1.1"
    _log_path: str | None = None
    _drip: float = 0.0  # > 0: this answer's body goes out one byte every _drip seconds (a drip fault)
    # Headers and body go out in separate writes: with Nagle's algorithm the body waited for the
    # client's delayed ACK (about 40 ms per answer on a kept-alive connection). Off, as on Azure's
    # front ends, so benchmarks measure drainer rather than the emulator.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet; requests are recorded in the model instead

    # -- plumbing ----------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes | str | dict[str, Any] | list[Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = body
        if self._log_path is not None:
            self._record(self._log_path, status, len(payload))
            self._log_path = None
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self._drip > 0:
            self._drip_out(payload)
            return
        self.wfile.write(payload)

    def _drip_out(self, payload: bytes) -> None:
        """One byte, then a pause, until the body is out or the client has gone (a drip fault)."""
        drip, self._drip = self._drip, 0.0
        self.close_connection = True  # a client that gave up mid-body must not get the next answer here
        stop = self.server.drips_end  # set when the faults are cleared or the emulator stops
        for index in range(len(payload)):
            try:
                self.wfile.write(payload[index : index + 1])
            except OSError:
                return  # the client gave up (its deadline): that is the point of the fault
            if stop.wait(drip):
                return  # the fault was cleared, or the emulator is stopping

    def _record(self, path: str, status: int | str, size: int = 0) -> None:
        model = self.server.model
        auth = self.headers.get("Authorization") or ""
        with model.lock:
            # Who asked (the VM whose managed identity the bearer token belongs to), for per-VM costs.
            principal = (
                model.token_owner.get(auth[len("Bearer ") :], "") if auth.startswith("Bearer ") else ""
            )
            model.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "query": urlsplit(self.path).query,
                    "metadata": self.headers.get("Metadata"),
                    "request_id": self.headers.get("x-ms-client-request-id"),
                    "forwarded": self.headers.get("X-Forwarded-For"),
                    "authorization": bool(self.headers.get("Authorization")),
                    "status": status,
                    "at": time.time(),
                    "principal": principal,
                    "bytes": size,  # the answer's body
                }
            )

    def _route(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if path.startswith(CONTROL + "/") or path == CONTROL:
            self._control(path[len(CONTROL) :].strip("/"), parse_qs(parts.query))
            return
        vm_name: str | None = None
        if path.startswith("/vm/"):
            _, _, rest = path.partition("/vm/")
            vm_name, _, tail = rest.partition("/")
            path = "/" + tail
        body = self._body()
        fault = self.server.model.take_fault(path, self.command)
        if fault is not None and fault.drip > 0:
            self._drip = fault.drip  # answered as usual below, slowly
            fault = None
        if fault is not None:
            self._record(path, "fault")
            self._fault(fault, arm=path.startswith("/subscriptions/"))
            return
        # Recorded as the answer is sent (see _send), so a client never sees an answer the log lacks.
        self._log_path = path
        if path.startswith("/subscriptions/"):
            self._arm(path, parse_qs(parts.query), body)
        else:
            self._imds(path, parse_qs(parts.query), vm_name, body)

    def _fault(self, fault: Fault, *, arm: bool = False) -> None:
        if fault.delay:
            time.sleep(fault.delay)
        if fault.reset:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        if fault.body is not None:
            body = fault.body
            if fault.echo_token:  # an answer that quotes the caller's token back (a careless proxy)
                auth = self.headers.get("Authorization") or ""
                body = body.replace("%TOKEN%", auth.removeprefix("Bearer "))
        elif arm:
            # ARM's error shape: {"error": {"code", "message"}}, with the codes Azure uses.
            code, message = _ARM_ERRORS.get(fault.status, ("InternalServerError", "An error occurred."))
            body = json.dumps({"error": {"code": code, "message": message}})
        else:
            body = json.dumps({"error": _ERRORS.get(fault.status, "Server error")})
        self._send(fault.status, body, headers)

    # -- IMDS --------------------------------------------------------------------------------

    def _imds(self, path: str, query: dict[str, list[str]], vm_name: str | None, body: bytes) -> int:
        model = self.server.model
        vm = model.vm(vm_name)
        if vm is None:
            self._send(404, {"error": "Not found"})
            return 404
        if self.headers.get("X-Forwarded-For") is not None:
            # IMDS refuses requests that went through a proxy.
            self._send(400, {"error": "Bad request"})
            return 400
        if (self.headers.get("Metadata") or "").lower() != "true":
            self._send(400, {"error": "Bad request. Required metadata header not specified"})
            return 400
        version = (query.get("api-version") or [""])[0]
        path = path.rstrip("/")
        if path == "/metadata/scheduledevents":
            if version not in SCHEDULED_EVENTS_VERSIONS:
                self._send(400, MISSING_API_VERSION)
                return 400
            if self.command == "GET":
                document, etag = model.document_and_etag(version)
                if model.etags and self.headers.get("If-None-Match") == etag:
                    self._send(304, b"", {"ETag": etag})
                    return 304
                self._send(200, document, {"ETag": etag} if model.etags else None)
                return 200
            if self.command == "POST":
                status, answer = model.approve(body, vm.name)
                self._send(status, answer)
                return status
            self._send(405, {"error": "Not allowed"})
            return 405
        if path == "/metadata/instance":
            if version not in INSTANCE_VERSIONS:
                self._send(400, MISSING_API_VERSION)
                return 400
            if self.command != "GET":
                self._send(405, {"error": "Not allowed"})
                return 405
            self._send(200, vm.instance_json())
            return 200
        if path == "/metadata/identity/oauth2/token":
            resource = (query.get("resource") or [""])[0]
            if version not in TOKEN_VERSIONS or not resource:
                self._send(
                    400,
                    {
                        "error": "invalid_request",
                        "error_description": "Required query variable 'resource' is "
                        "missing or api-version is invalid",
                    },
                )
                return 400
            client_id = (query.get("client_id") or [""])[0] or None
            if not vm.has_identity(client_id):
                self._send(400, IDENTITY_NOT_FOUND)
                return 400
            self._send(200, model.token(resource, client_id, vm.name))
            return 200
        self._send(404, {"error": "Not found"})
        return 404

    # -- ARM ---------------------------------------------------------------------------------

    def _arm(self, path: str, query: dict[str, list[str]], body: bytes) -> int:
        latency = self.server.model.throttle.settings.latency
        if latency > 0:
            time.sleep(latency)
        try:
            status, answer, headers = self._arm_answer(path, query, body)
        except ArmError as exc:
            self._send(exc.status, exc.body, exc.headers)
            return exc.status
        self._send(status, answer, headers)
        return status

    def _arm_answer(
        self, path: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        model = self.server.model
        arm = model.arm
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise ArmError(
                401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        with model.lock:
            known = auth[len("Bearer ") :] in model.tokens
            principal = model.token_owner.get(auth[len("Bearer ") :], "")
        if not known:
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        wait, limits = model.throttle.admit(principal, self.command != "GET", time.time())
        if wait > 0:
            raise ArmError(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type.",
                headers=limits,
            )
        version = (query.get("api-version") or [""])[0]
        if not version:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        operation = _OPERATION.match(path)
        if operation:
            status = arm.operation_status(operation.group(3))
            # Azure's Network RP answers an operation still InProgress with Retry-After (10 s in the
            # public recordings); the SDK waits that long instead of its polling interval.
            after = arm.settings.status_retry_after
            in_progress = after and status["status"] == "InProgress"
            return 200, status, {**limits, "Retry-After": after} if in_progress and after else limits
        compute = _COMPUTE.match(path)
        if compute and self.command == "GET":
            if compute.group(1).lower() != arm.subscription_id.lower():
                raise ArmError(
                    404, "SubscriptionNotFound", f"The subscription '{compute.group(1)}' could not be found."
                )
            if compute.group(3):  # a scale-set Uniform instance's NIC, under the Compute provider
                return 200, arm.get_nic_by_id(path), limits
            return 200, arm.get_vm(f"/subscriptions/{compute.group(1)}/{compute.group(2)}"), limits
        listing = _SUBSCRIPTION_LIST.match(path)
        if listing and self.command == "GET":
            if listing.group(1).lower() != arm.subscription_id.lower():
                raise ArmError(
                    404, "SubscriptionNotFound", f"The subscription '{listing.group(1)}' could not be found."
                )
            if listing.group(2).lower() == "networkinterfaces":
                return 200, arm.list_nics(None), limits
            return 200, arm.list_lbs(None), limits
        tags = _TAGS_AT_SCOPE.match(path)
        if tags:
            subscription, group, name = tags.groups()
            if subscription.lower() != arm.subscription_id.lower():
                raise ArmError(
                    404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found."
                )
            arm.locate("networkInterfaces", name, group)
            if self.command not in ("GET", "PUT", "PATCH"):
                raise ArmError(405, "MethodNotAllowed", f"{self.command} is not supported on {path}")
            given = _json_body(body) if self.command != "GET" else {}
            return 200, arm.tags_at_scope(name, self.command, given), limits
        permissions = _PERMISSIONS.match(path)
        if permissions and self.command == "GET":
            # Permissions - List For Resource Group / List For Resource (Azure/azure-rest-api-specs,
            # Microsoft.Authorization stable/2022-04-01, authorization-RoleDefinitionsCalls.json):
            # {"value": [{"actions", "notActions", "dataActions", "notDataActions"}]}.
            if version not in _PERMISSIONS_VERSIONS:
                raise ArmError(
                    400,
                    "InvalidApiVersionParameter",
                    f"The api-version '{version}' is invalid. The supported versions are "
                    f"'{', '.join(_PERMISSIONS_VERSIONS)}'.",
                )
            if permissions.group(1).lower() != arm.subscription_id.lower():
                raise ArmError(
                    404,
                    "SubscriptionNotFound",
                    f"The subscription '{permissions.group(1)}' could not be found.",
                )
            if permissions.group(2).lower() not in arm.groups():
                raise ArmError(
                    404,
                    "ResourceGroupNotFound",
                    f"Resource group '{permissions.group(2)}' could not be found.",
                )
            scope = path[: path.lower().rindex("/providers/microsoft.authorization/permissions")]
            return 200, arm.permissions(principal, scope), limits
        match = _RESOURCE.match(path)
        if not match:
            raise ArmError(404, "InvalidResourceType", f"The resource type could not be found for {path}.")
        subscription, group, kind, name, pool = match.groups()
        if subscription.lower() != arm.subscription_id.lower():
            raise ArmError(
                404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found."
            )
        kind = next(k for k in _KINDS if k.lower() == kind.lower())
        arm.locate(kind, name, group)
        method = self.command
        if_match = self.headers.get("If-Match")
        if kind == "applicationSecurityGroups" and name:
            if method == "GET":
                return 200, arm.get_asg(name), limits
            if method == "PUT":
                answer, op = arm.put_asg(name, _json_body(body), if_match)
                return 200, answer, {**limits, **self._async_headers(op, version)}
        if kind == "networkInterfaces":
            if name is None and method == "GET":
                return 200, arm.list_nics(group), {}
            if name and method == "GET":
                return 200, arm.get_nic(name), {}
            if name and method == "PUT":
                with self.server.in_flight(arm.settings.put_delay):
                    answer, op = arm.put_nic(name, _json_body(body), if_match)
                return 200, answer, self._async_headers(op, version)
            if name and method == "PATCH":
                return 200, arm.patch_nic_tags(name, _json_body(body)), {}
        if kind == "loadBalancers":
            if name is None and method == "GET":
                return 200, arm.list_lbs(group), {}
            if name and pool is None and method == "GET":
                return 200, arm.get_lb(name), {}
            if name and pool and method == "GET":
                return 200, arm.get_pool(name, pool), {}
            if name and pool and method == "PUT":
                answer, op = arm.put_pool(name, pool, _json_body(body), if_match)
                return 200, answer, self._async_headers(op, version)
        if kind == "applicationGateways" and name and method == "GET":
            return 200, arm.get_app_gateway(name), {}
        raise ArmError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _async_headers(self, operation: str, version: str) -> dict[str, str]:
        arm = self.server.model.arm
        # ``lro_host`` (control route arm/lro-host): a hostile or broken ARM pointing its operation
        # URL at another host, which must never receive the token.
        host = self.server.lro_host or self.headers.get("Host") or "127.0.0.1"
        headers = {
            "Azure-AsyncOperation": f"http://{host}/subscriptions/{arm.subscription_id}/providers/"
            f"Microsoft.Network/locations/{arm.location}/operations/{operation}?api-version={version}",
        }
        if arm.settings.lro_retry_after is not None:
            headers["Retry-After"] = arm.settings.lro_retry_after
        return headers

    # -- control -----------------------------------------------------------------------------

    def _control(self, route: str, query: dict[str, list[str]]) -> None:
        model = self.server.model
        body = self._body()
        try:
            data: Any = json.loads(body) if body and route != "document" else {}
        except ValueError:
            self._send(400, {"error": "control body is not JSON"})
            return
        method = self.command
        segments = route.split("/") if route else []
        try:
            if method == "GET" and route == "state":
                self._send(200, {**model.snapshot(), "max_concurrent_puts": self.server.max_concurrent_puts})
            elif method == "GET" and route == "requests":
                with model.lock:
                    self._send(200, list(model.requests))
            elif method == "POST" and route == "events":
                event = model.schedule(
                    data["type"],
                    list(data.get("resources") or [model.default_vm().name]),
                    event_id=data.get("event_id"),
                    status=data.get("status", "Scheduled"),
                    not_before_in=data.get("not_before_in"),
                    duration=int(data.get("duration", -1)),
                    description=data.get("description", ""),
                    source=data.get("source", "Platform"),
                    maintenance_seconds=data.get("maintenance_seconds"),
                    linger_seconds=float(data.get("linger_seconds", 0.0)),
                    second_impact_after=data.get("second_impact_after"),
                    second_impact_seconds=float(data.get("second_impact_seconds", 0.0)),
                )
                self._send(201, event.to_json("2020-07-01"))
            elif (
                method == "POST" and len(segments) == 3 and segments[0] == "events" and segments[2] == "start"
            ):
                self._send(200 if model.start(segments[1]) else 404, {})
            elif method == "DELETE" and len(segments) == 2 and segments[0] == "events":
                self._send(200 if model.remove(segments[1]) else 404, {})
            elif route == "document" and method == "PUT":
                with model.lock:
                    model.raw_document = body.decode("utf-8", "surrogateescape")
                self._send(200, {})
            elif route == "document" and method == "DELETE":
                with model.lock:
                    model.raw_document = None
                self._send(200, {})
            elif route == "faults" and method == "POST":
                fault = Fault(**data)
                with model.lock:
                    model.faults.append(fault)
                self._send(201, {})
            elif route == "faults" and method == "DELETE":
                with model.lock:
                    model.faults.clear()
                self.server.end_drips()
                self._send(200, {})
            elif route == "etags" and method == "POST":
                with model.lock:
                    model.etags = bool(data["on"])
                self._send(200, {})
            elif route == "incarnation" and method == "POST":
                model.set_incarnation(int(data["value"]))
                self._send(200, {})
            elif (
                method == "POST"
                and len(segments) == 3
                and segments[0] == "vms"
                and segments[2] == "boot-id-file"
            ):
                self._send(200 if model.set_boot_id_file(segments[1], str(data["path"])) else 404, {})
            elif (
                method == "POST" and len(segments) == 3 and segments[0] == "vms" and segments[2] == "identity"
            ):
                user = data.get("user_assigned")
                found = model.set_identity(
                    segments[1], bool(data.get("system_assigned", True)), None if user is None else list(user)
                )
                self._send(200 if found else 404, {})
            elif route == "nodes" and method == "POST":
                model.share_node(str(data["node"]), [str(n) for n in data["vms"]])
                self._send(200, {})
            elif route == "vms" and method == "POST":
                vm = model.add_vm(
                    data["name"],
                    data.get("scale_set", ""),
                    uniform=bool(data.get("uniform")),
                    nic_resource_group=data.get("nic_resource_group"),
                )
                self._send(201, {"name": vm.name})
            elif segments and segments[0] == "arm":
                self._arm_control(method, segments[1:], data)
            elif route == "reset" and method == "POST":
                model.reset(int(data.get("incarnation", 1)))
                self._send(200, {})
            else:
                self._send(404, {"error": f"no control route {method} {route}"})
        except (KeyError, TypeError, ValueError) as exc:
            self._send(400, {"error": f"bad control request: {exc}"})

    def _arm_control(self, method: str, segments: list[str], data: Any) -> None:
        model = self.server.model
        arm = model.arm
        route = "/".join(segments)
        if method == "POST" and route == "loadbalancers":
            arm.add_load_balancer(
                data["name"],
                pools=list(data.get("pools", [])),
                ip_pools=list(data.get("ip_pools", [])),
                probe=bool(data.get("probe", True)),
                sku=data.get("sku", "Standard"),
                resource_group=data.get("resource_group"),
            )
            self._send(201, {"id": arm.lb_id(data["name"])})
        elif method == "POST" and route == "asgs":
            self._send(201, {"id": arm.add_asg(data["name"], data.get("resource_group"))})
        elif method == "POST" and route == "permissions":
            arm.set_assignments(str(data["principal"]), list(data["assignments"]))
            self._send(200, {})
        elif method == "POST" and route == "throttle":
            model.throttle.configure(data)
            self._send(200, {})
        elif method == "GET" and route == "stats":
            with model.throttle.lock:
                stats = {k: dict(v) for k, v in model.throttle.stats.items()}
            with arm.lock:
                timeline = list(arm.timeline)
            self._send(200, {"principals": stats, "timeline": timeline})
        elif method == "POST" and route == "stats/reset":
            model.throttle.reset_stats()
            with arm.lock:
                arm.timeline.clear()
            self._send(200, {})
        elif method == "POST" and route == "join":
            nic = data.get("nic") or f"{data['vm']}-nic"
            pool_id = data.get("pool_id") or arm.pool_id(data["lb"], data["pool"])
            arm.join(nic, pool_id, ipconfig=data.get("ipconfig", "ipconfig1"), kind=data.get("kind", "lb"))
            self._send(200, {})
        elif method == "POST" and route == "leave":
            nic = data.get("nic") or f"{data['vm']}-nic"
            pool_id = data.get("pool_id") or arm.pool_id(data["lb"], data["pool"])
            arm.leave(nic, pool_id, ipconfig=data.get("ipconfig", "ipconfig1"))
            self._send(200, {})
        elif method == "POST" and route == "ip-members":
            ip = data.get("ip")
            if ip is None:
                vm = model.vm(data["vm"])
                if vm is None:
                    raise KeyError(data["vm"])
                ip = vm.private_ip
            arm.add_ip_member(
                data["lb"],
                data["pool"],
                data.get("name") or f"addr-{ip}",
                ip,
                data.get("admin_state"),
                vnet=data.get("vnet") or "vnet",
            )
            self._send(201, {})
        elif method == "POST" and route == "nics":
            vm = model.vm(data["vm"])
            if vm is None:
                raise KeyError(data["vm"])
            arm.add_nic(
                data["name"],
                vm.resource_id,
                data.get("ip", vm.private_ip),
                primary=False,
                resource_group=data.get("resource_group"),
            )
            self._send(201, {"id": arm.nic_id(data["name"])})
        elif method == "POST" and route == "app-gateways":
            arm.add_app_gateway(data["name"], list(data["pools"]))
            self._send(201, {})
        elif method == "DELETE" and len(segments) == 4 and segments[0] == "loadbalancers":
            arm.delete_pool(segments[1], segments[3])
            self._send(200, {})
        elif method == "GET" and route == "membership":
            self._send(200, arm.membership())
        elif method == "GET" and len(segments) == 2 and segments[0] == "nics":
            with arm.lock:
                self._send(200, arm.nics[segments[1].lower()])
        elif method == "GET" and route == "writes":
            with arm.lock:
                self._send(200, list(arm.writes))
        elif method == "POST" and route == "settings":
            with arm.lock:
                arm.settings = ArmSettings(
                    lro_polls=int(data.get("lro_polls", 1)),
                    lro_retry_after=data.get("lro_retry_after"),
                    status_retry_after=data.get("status_retry_after"),
                    put_delay=float(data.get("put_delay", 0.0)),
                    tag_policy=data.get("tag_policy"),
                )
            self._send(200, {})
        elif method == "POST" and route == "lro-host":
            self.server.lro_host = data.get("host") or None
            self._send(200, {})
        elif method == "POST" and route == "fail-lro":
            with arm.lock:
                arm.fail_next_lro = int(data.get("count", 1))
                nic = data.get("nic")
                arm.fail_lro_nic = str(nic).lower() if nic else None
            self._send(200, {})
        elif method == "POST" and route == "mutate":
            with arm.lock:
                arm.mutations.append(
                    Mutation(
                        nic=data["nic"],
                        tag=tuple(data["tag"]) if data.get("tag") else None,
                        add_pool=tuple(data["add_pool"]) if data.get("add_pool") else None,
                    )
                )
            self._send(200, {})
        else:
            self._send(404, {"error": f"no control route {method} arm/{route}"})

    do_GET = _route
    do_POST = _route
    do_PUT = _route
    do_DELETE = _route
    do_PATCH = _route


_KINDS = ("networkInterfaces", "loadBalancers", "applicationGateways", "applicationSecurityGroups")
_RESOURCE = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Network/"
    r"(networkInterfaces|loadBalancers|applicationGateways|applicationSecurityGroups)(?:/([^/]+))?"
    r"(?:/backendAddressPools/([^/]+))?/?$",
    re.IGNORECASE,
)
# A NIC's tags as the Microsoft.Resources/tags extension resource (Tag Contributor's way in).
_TAGS_AT_SCOPE = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Network/networkInterfaces/"
    r"([^/]+)/providers/Microsoft\.Resources/tags/default/?$",
    re.IGNORECASE,
)
# A VM (``virtualMachines/{name}``), a scale-set Uniform instance (``virtualMachineScaleSets/{ss}/
# virtualMachines/{id}``), or such an instance's NIC (``.../networkInterfaces/{nic}``).
_COMPUTE = re.compile(
    r"^/subscriptions/([^/]+)/(resourceGroups/[^/]+/providers/Microsoft\.Compute/"
    r"(?:virtualMachines/[^/]+|virtualMachineScaleSets/[^/]+/virtualMachines/[^/]+))"
    r"(/networkInterfaces/[^/]+)?/?$",
    re.IGNORECASE,
)
_SUBSCRIPTION_LIST = re.compile(
    r"^/subscriptions/([^/]+)/providers/Microsoft\.Network/(networkInterfaces|loadBalancers)/?$",
    re.IGNORECASE,
)
_PERMISSIONS = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)(?:/providers/.+)?"
    r"/providers/Microsoft\.Authorization/permissions/?$",
    re.IGNORECASE,
)
_PERMISSIONS_VERSIONS = ("2015-07-01", "2022-04-01")
_OPERATION = re.compile(
    r"^/subscriptions/([^/]+)/providers/Microsoft\.Network/locations/([^/]+)/operations/([^/]+)$",
    re.IGNORECASE,
)


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body)
    except ValueError as exc:
        raise ArmError(
            400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
        ) from exc
    if not isinstance(decoded, dict):
        raise ArmError(400, "InvalidRequestContent", "The request content must be an object.")
    return decoded


_ARM_ERRORS = {
    400: ("BadRequest", "The request was invalid."),
    403: ("AuthorizationFailed", "The client does not have authorization to perform this action."),
    404: (
        "ResourceNotFound",
        "The Resource was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    ),
    409: ("AnotherOperationInProgress", "Another operation on this or dependent resource is in progress."),
    412: ("PreconditionFailed", "Precondition failed."),
    429: ("TooManyRequests", "The request is being throttled."),
}

_ERRORS = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Not allowed",
    410: "Gone",
    429: "Too many requests",
    500: "Server error",
    503: "Service unavailable",
}


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A fleet connects at once (every VM's timer fires in the same second): socketserver's backlog
    # of 5 would drop their SYNs and time the clients out, which Azure's endpoints do not do.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout tests, injected resets) is expected; anything else is a bug.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, host: str, port: int, model: ImdsModel) -> None:
        self.model = model
        self.lro_host: str | None = None  # host:port for Azure-AsyncOperation URLs; None: the Host header
        # Set when the faults are cleared or the emulator stops: answers dripping then end at once.
        self.drips_end = threading.Event()
        super().__init__((host, port), _Handler)
        # NIC PUTs being answered right now, and the most seen at once (GET /_emulator/state).
        self._puts = 0
        self.max_concurrent_puts = 0
        self._puts_lock = threading.Lock()

    def end_drips(self) -> None:
        """End the answers dripping now (the connection closes mid-body); later drips start afresh."""
        ending, self.drips_end = self.drips_end, threading.Event()
        ending.set()

    @contextlib.contextmanager
    def in_flight(self, delay: float) -> Iterator[None]:
        """Count one NIC PUT while it is answered (taking ``delay`` seconds)."""
        with self._puts_lock:
            self._puts += 1
            self.max_concurrent_puts = max(self.max_concurrent_puts, self._puts)
        try:
            if delay > 0:
                time.sleep(delay)
            yield
        finally:
            with self._puts_lock:
                self._puts -= 1

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else host
        return f"http://{shown}:{port}"


class RunningEmulator:
    """An emulator served from a background thread; a context manager that stops it."""

    def __init__(self, vms: list[str], host: str = "127.0.0.1", port: int = 0) -> None:
        self.model = ImdsModel(vms)
        self.server = EmulatorServer(host, port, self.model)
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="emulator", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return self.server.url

    def vm_url(self, name: str) -> str:
        """The IMDS base URL as seen from VM ``name``."""
        return f"{self.url}/vm/{name}"

    def stop(self) -> None:
        self.server.end_drips()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(host: str, port: int, vms: list[str]) -> int:
    """``drainer emulator``: serve until interrupted."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        print("drainer emulator: refusing to listen beyond loopback", file=sys.stderr)
        return 2
    server = EmulatorServer(host, port, ImdsModel(vms))
    print(
        f"drainer emulator: IMDS at {server.url} (VMs: {', '.join(vms)}); "
        f"control API at {server.url}{CONTROL}/",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
