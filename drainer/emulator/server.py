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
                                               "duration"?, "event_id"?, "description"?}
  POST   /_emulator/events/<id>/start         Scheduled -> Started
  DELETE /_emulator/events/<id>               complete or cancel (the event disappears)
  PUT    /_emulator/document                  serve this body verbatim (any bytes) until DELETE
  DELETE /_emulator/document
  POST   /_emulator/faults                    {"match", "status", "count", "body", "delay",
                                               "retry_after", "reset"}
  DELETE /_emulator/faults
  POST   /_emulator/incarnation               {"value": N}  (service re-enabled)
  POST   /_emulator/vms                       {"name", "scale_set"?}
  POST   /_emulator/reset
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from drainer.emulator.imds_model import (
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
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _record(self, path: str, status: int | str) -> None:
        model = self.server.model
        with model.lock:
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
        fault = self.server.model.take_fault(path)
        if fault is not None:
            self._record(path, "fault")
            self._fault(fault)
            return
        status = self._imds(path, parse_qs(parts.query), vm_name, body)
        self._record(path, status)

    def _fault(self, fault: Fault) -> None:
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
        body = (
            fault.body
            if fault.body is not None
            else json.dumps({"error": _ERRORS.get(fault.status, "Server error")})
        )
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
                self._send(200, model.document(version))
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
            self._send(200, model.token(resource, client_id))
            return 200
        self._send(404, {"error": "Not found"})
        return 404

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
                self._send(200, model.snapshot())
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
                self._send(200, {})
            elif route == "incarnation" and method == "POST":
                model.set_incarnation(int(data["value"]))
                self._send(200, {})
            elif route == "vms" and method == "POST":
                vm = model.add_vm(data["name"], data.get("scale_set", ""))
                self._send(201, {"name": vm.name})
            elif route == "reset" and method == "POST":
                model.reset(int(data.get("incarnation", 1)))
                self._send(200, {})
            else:
                self._send(404, {"error": f"no control route {method} {route}"})
        except (KeyError, TypeError, ValueError) as exc:
            self._send(400, {"error": f"bad control request: {exc}"})

    do_GET = _route
    do_POST = _route
    do_PUT = _route
    do_DELETE = _route
    do_PATCH = _route


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

    def __init__(self, host: str, port: int, model: ImdsModel) -> None:
        self.model = model
        super().__init__((host, port), _Handler)

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
