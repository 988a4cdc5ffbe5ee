"""The daemon's small HTTP servers (readiness probe; metrics and health), built so that the network
cannot take what a drain needs:

- at most ``max_connections`` connections are served at once, and at most ``per_client`` from one
  address (so one host cannot starve the load balancer's probe source); one more is accepted and
  closed at once (accepting keeps the kernel's queue moving; closing holds no descriptor or thread);
- each connection gets ``timeout`` seconds per read or write and ``deadline`` seconds in all, then it is
  shut down (an idle or trickling client cannot hold a slot);
- one request per connection (HTTP/1.0), request lines and headers bounded by http.server.

A server binds its address itself, or serves a listening socket it is given (one systemd passed,
drainer.io.listenfds): then the port stays bound while drainer is down.

The standard library's http.server is the server (no dependency; nothing to import on the idle path);
the bounds are added here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_CONNECTIONS = 32
PER_CLIENT = 8
AZURE_PROBE_SOURCE = "168.63.129.16"  # the address Azure's health probes come from (documented)


def _bucket(address: str) -> str:
    """Whose connection this is, for the per-client limit: an IPv6 /64 is one client (one host can
    use every address of its /64)."""
    import ipaddress  # noqa: PLC0415 - only when serving

    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 6 and not ip.is_loopback:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


TIMEOUT = 5.0  # seconds per read or write
DEADLINE = 10.0  # seconds per connection, whatever the client does


class BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int] | socket.socket,
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        per_client: int = PER_CLIENT,
        deadline: float = DEADLINE,
    ) -> None:
        self.max_connections = max_connections
        self.per_client = per_client
        self.deadline = deadline
        self._clients: dict[str, int] = {}
        self.refused = 0  # connections closed at once because every slot was taken
        self._live: dict[socket.socket, tuple[float, str]] = {}
        self._live_lock = threading.Lock()
        self._stop = threading.Event()
        self.adopted = isinstance(address, socket.socket)  # a listening socket given, not bound here
        if isinstance(address, socket.socket):
            self._adopt(address, handler)
        else:
            if ":" in address[0]:
                self.address_family = socket.AF_INET6
            super().__init__(address, handler)
        threading.Thread(target=self._watchdog, name="http deadline", daemon=True).start()

    def _adopt(self, listening: socket.socket, handler: type[BaseHTTPRequestHandler]) -> None:
        """Serve ``listening`` (bound and listening already) instead of binding a socket."""
        self.address_family = listening.family
        super().__init__(listening.getsockname(), handler, bind_and_activate=False)
        self.socket.close()  # the one TCPServer made, never bound
        self.socket = listening
        self.server_name, self.server_port = listening.getsockname()[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        client = _bucket(str(client_address[0]) if isinstance(client_address, tuple) else "")
        with self._live_lock:
            # Azure's load-balancer probes come from 168.63.129.16: they get a slot even when every
            # other one is taken (only their own per-client limit applies).
            full = len(self._live) >= self.max_connections and client != AZURE_PROBE_SOURCE
            if full or self._clients.get(client, 0) >= self.per_client:
                self.refused += 1
                admitted = False
            else:
                self._clients[client] = self._clients.get(client, 0) + 1
                self._live[request] = (time.monotonic() + self.deadline, client)
                admitted = True
        if not admitted:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        with self._live_lock:
            entry = self._live.pop(request, None)
            if entry is not None:
                left = self._clients.pop(entry[1]) - 1
                if left:
                    self._clients[entry[1]] = left

    def _watchdog(self) -> None:
        """Shut down connections past their deadline: their handler's next read or write fails."""
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._live_lock:
                overdue = [s for s, (end, _) in self._live.items() if end < now]
            for sock in overdue:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()


class QuietHandler(BaseHTTPRequestHandler):
    """A handler with the per-operation timeout, no access log, and one way to answer."""

    timeout = TIMEOUT  # StreamRequestHandler sets it on the socket
    server_version = "drainer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.get(self.path.split("?", 1)[0])

    def do_HEAD(self) -> None:
        self.get(self.path.split("?", 1)[0])

    def get(self, path: str) -> None:
        """Answer a GET or HEAD of ``path`` (the query string removed): for subclasses."""
        self.answer(404, b"not found\n")

    def answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def serve(
    address: tuple[str, int] | socket.socket, handler: type[BaseHTTPRequestHandler], **attrs: Any
) -> BoundedServer:
    """Bind ``address`` (or take a listening socket) and serve in a background thread. ``attrs`` are
    set on the server for the handler. Raises OSError when the address cannot be bound."""
    server = BoundedServer(address, handler)
    for key, value in attrs.items():
        setattr(server, key, value)
    name = f"http {server.server_address}"
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
