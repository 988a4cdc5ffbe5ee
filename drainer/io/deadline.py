"""One deadline for a whole HTTP exchange: connect, send, and every read of the answer.

urllib3's timeouts bound each socket operation, not the exchange: an answer dripped one byte at a
time, each byte inside the read timeout (a slow proxy, a middlebox, a stuck IMDS), never times out,
and holds the run lock for as long as it drips. Here each socket operation of a connection waits at
most ``min(its own timeout, what is left of the deadline)``, and fails with ``DeadlinePassed`` (a
``TimeoutError``: urllib3 treats it as any socket timeout, and closes the connection) once nothing is
left:

- connect and the TLS handshake: ``BoundedHTTPConnection._new_conn``;
- send: ``BoundedHTTPConnection.send`` (http.client's, through which urllib3 writes head and body);
- every read of the answer (status line, headers, body, and a proxy's answer to CONNECT): http.client
  reads it through ``_BoundedReader``, which sets the socket's timeout before each ``recv``.

``DeadlineAdapter`` (a requests ``HTTPAdapter``) makes every connection pool it hands out, through a
proxy or not, open such connections. The ``Deadline`` is one object per client, moved forward
(``start``) when an exchange begins and read at every socket operation, so every thread using the
client (ARM's per-NIC writes, the SDK's operation poller) is held to the same deadline.
"""

from __future__ import annotations

import http.client
import io
import math
import socket
import time
from collections.abc import Mapping
from typing import Any

from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import ConnectionPool, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError


class DeadlinePassed(TimeoutError):  # noqa: N818 - a TimeoutError, named for what happened
    """The exchange's deadline passed before a socket operation could complete."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the {seconds:g} s deadline passed")


class Deadline:
    """When the current exchange must be over: ``at``, a ``time.monotonic()`` value (infinite until
    the first ``start``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = math.inf

    def start(self) -> None:
        """An exchange begins: it must be over ``seconds`` from now."""
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def timeout(self, own: float | None) -> float | None:
        """The timeout for one socket operation whose own timeout is ``own`` (None: none).

        Raises DeadlinePassed when nothing is left.
        """
        left = self.remaining()
        if left <= 0:
            raise DeadlinePassed(self.seconds)
        if own is None:
            return None if math.isinf(left) else left
        return min(own, left)


class _BoundedReader(io.RawIOBase):
    """The socket's byte stream, each ``recv`` bounded by the deadline as well as the read timeout."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._own = sock.gettimeout()  # the read timeout urllib3 set before the answer
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._deadline.timeout(self._own))
        return self._raw.readinto(buffer)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _BoundedResponse(http.client.HTTPResponse):
    """http.client's answer, read through ``_BoundedReader``."""

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: Deadline,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp.close()  # http.client's own reader: nothing was read through it yet
        self.fp = io.BufferedReader(_BoundedReader(sock, deadline))


def _own_timeout(value: object) -> float | None:
    """A connection's timeout as a number (urllib3's "default" sentinel and None: no timeout)."""
    return float(value) if isinstance(value, (int, float)) else None


class BoundedHTTPConnection(HTTPConnection):
    """urllib3's connection, every socket operation bounded by ``deadline`` too."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        self.deadline = deadline
        super().__init__(*args, **kwargs)

    # http.client makes each answer (and a proxy's answer to CONNECT) with
    # ``self.response_class(self.sock, method=...)``: a method serves as well as a class.
    def response_class(  # type: ignore[override]
        self, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> http.client.HTTPResponse:
        return _BoundedResponse(sock, *args, deadline=self.deadline, **kwargs)

    def _new_conn(self) -> socket.socket:
        try:
            self.timeout = self.deadline.timeout(_own_timeout(self.timeout))
        except DeadlinePassed as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} not attempted: {exc}") from exc
        return super()._new_conn()

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self.deadline.timeout(_own_timeout(self.timeout)))
        super().send(data)


class BoundedHTTPSConnection(BoundedHTTPConnection, HTTPSConnection):
    """The same over TLS (the handshake is bounded with the connect)."""


def bind(pool: ConnectionPool, deadline: Deadline) -> None:
    """Make ``pool``'s new connections bounded by ``deadline`` (before it opens any)."""
    if not isinstance(pool, HTTPConnectionPool) or pool.conn_kw.get("deadline") is deadline:
        return
    tls = isinstance(pool, HTTPSConnectionPool)
    pool.ConnectionCls = BoundedHTTPSConnection if tls else BoundedHTTPConnection
    pool.conn_kw["deadline"] = deadline


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections are bounded by ``deadline`` (see the module)."""

    def __init__(self, deadline: Deadline, **kwargs: Any) -> None:
        self.deadline = deadline
        super().__init__(**kwargs)

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: tuple[str, str] | str | None = None,
    ) -> ConnectionPool:
        # The one place requests picks the pool (direct or through a proxy) for a request.
        pool = super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        bind(pool, self.deadline)
        return pool
