"""Listening sockets handed over by systemd (socket activation, the ``sd_listen_fds`` protocol).

A socket unit (packaging/systemd/drainer-probe.socket, drainer-metrics.socket) binds the address at
boot and keeps it bound while the daemon is down (a restart, an upgrade, a crash), so no other local
process can take the port in between and answer the load balancer's probe or ``/healthz`` in
drainer's place. systemd starts the daemon with the sockets open and these variables set:

- ``LISTEN_PID``: the process the sockets are for. Another pid means the variables were inherited
  from a parent and are not ours: they are ignored (what ``sd_listen_fds`` does).
- ``LISTEN_FDS``: how many descriptors, numbered from 3 (``SD_LISTEN_FDS_START``).
- ``LISTEN_FDNAMES``: their names (``FileDescriptorName=``), colon-separated; "unknown" when unset.

The variables are removed from the environment once read (children and hooks must not take them for
theirs), and the descriptors are marked close-on-exec. The protocol is small and stable (systemd's
sd_listen_fds(3) documents it as an interface), so it is written out here rather than depending on
a binding.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from typing import NamedTuple

from drainer.base.errors import EXIT_USAGE, DrainerError

SD_LISTEN_FDS_START = 3
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
UNKNOWN = "unknown"  # the name sd_listen_fds_with_names gives a descriptor when LISTEN_FDNAMES is unset


class ListenFdsError(DrainerError):
    """The inherited descriptors cannot be used: the variables are malformed, or a descriptor is not a
    listening stream socket. Exit code 2, like an address the daemon cannot listen on."""

    exit_code = EXIT_USAGE

    def __init__(self, variable: str, reason: str) -> None:
        self.variable = variable
        self.reason = reason
        super().__init__(f"socket activation: {variable}: {reason}")


class Passed(NamedTuple):
    """What the environment says was passed: (descriptor, name) pairs, and why nothing was, if so."""

    fds: list[tuple[int, str]]
    ignored: str  # "" when the variables were absent or are ours


def parse(env: MutableMapping[str, str], pid: int) -> Passed:
    """Read the protocol's variables for process ``pid`` (no descriptor is touched).
    Raises ListenFdsError when they are present, meant for ``pid`` and malformed."""
    listen_pid = env.get("LISTEN_PID")
    if listen_pid is None:
        return Passed([], "")
    if not listen_pid.isdigit():
        raise ListenFdsError("LISTEN_PID", f"not a process id: {listen_pid!r}")
    if int(listen_pid) != pid:
        return Passed([], f"LISTEN_PID={listen_pid} is another process (this is {pid})")
    count_text = env.get("LISTEN_FDS", "0")
    if not count_text.isdigit():
        raise ListenFdsError("LISTEN_FDS", f"not a count: {count_text!r}")
    count = int(count_text)
    names_text = env.get("LISTEN_FDNAMES")
    names = [UNKNOWN] * count if names_text is None else names_text.split(":")
    if len(names) != count:
        raise ListenFdsError(
            "LISTEN_FDNAMES", f"{len(names)} names ({names_text!r}) for LISTEN_FDS={count} descriptors"
        )
    return Passed([(SD_LISTEN_FDS_START + i, name or UNKNOWN) for i, name in enumerate(names)], "")


def adopt(fd: int, name: str) -> socket.socket:
    """The listening stream socket on descriptor ``fd``, close-on-exec and blocking (as socketserver
    binds its own). Raises ListenFdsError when ``fd`` is not one (closing nothing)."""
    try:
        os.set_inheritable(fd, False)  # FD_CLOEXEC: hooks and other children do not get it
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenFdsError("LISTEN_FDS", f"descriptor {fd} ({name}): {exc.strerror or exc}") from exc
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (
        sock.type != socket.SOCK_STREAM
        or not listening
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
    ):
        sock.detach()  # not ours to close: say what is wrong instead
        raise ListenFdsError(
            "LISTEN_FDS",
            f"descriptor {fd} ({name}) is not a listening TCP socket (ListenStream= in the unit)",
        )
    sock.setblocking(True)
    return sock


def listen_fds(env: MutableMapping[str, str] | None = None) -> tuple[dict[str, list[socket.socket]], str]:
    """The sockets passed to this process, by name (several sockets may share one), and a note when
    variables meant for another process were ignored. The variables are removed from ``env``
    (default: this process's environment) whatever they held. Raises ListenFdsError (see parse,
    adopt)."""
    env = os.environ if env is None else env
    try:
        passed = parse(env, os.getpid())
    finally:
        for variable in VARIABLES:
            env.pop(variable, None)  # os.environ.pop unsets it for children too
    sockets: dict[str, list[socket.socket]] = {}
    for fd, name in passed.fds:
        sockets.setdefault(name, []).append(adopt(fd, name))
    return sockets, passed.ignored


def address_of(sock: socket.socket) -> str:
    """``host:port`` of a bound socket, IPv6 hosts in brackets (as in the config)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serves(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Whether ``sock`` listens where the config says ``address``: the same port and host, where a
    dual-stack ``[::]`` socket also serves ``0.0.0.0`` (systemd's ``ListenStream=8088`` with
    ``BindIPv6Only=both``)."""
    import ipaddress  # noqa: PLC0415 - only when sockets were passed

    host, port = sock.getsockname()[:2]
    if port != address[1]:
        return False
    try:
        mine, wanted = ipaddress.ip_address(host.split("%", 1)[0]), ipaddress.ip_address(address[0])
    except ValueError:
        return False  # a host name in the config: not comparable, so reported as different
    if mine == wanted:
        return True
    dual_stack = sock.family == socket.AF_INET6 and not sock.getsockopt(
        socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
    )
    return dual_stack and mine.is_unspecified and wanted.is_unspecified and wanted.version == 4
