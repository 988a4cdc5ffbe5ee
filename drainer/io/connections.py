"""Established TCP connections to local service ports, read from /proc/net/tcp and tcp6 (Linux).

``[approval] service_ports = "auto"`` watches every port this VM listens on beyond loopback (a
service others connect to), except SSH and drainer's own probe and metrics ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

# The st column of /proc/net/tcp (include/net/tcp_states.h: TCP_ESTABLISHED = 1, TCP_LISTEN = 10).
ESTABLISHED = "01"
LISTEN = "0A"
SSH = 22
# Loopback addresses as /proc/net/tcp{,6} print them (hex, in the kernel's byte order): 127.0.0.0/8,
# ::1, and ::ffff:127.0.0.0/104.
_V6_LOOPBACK = "00000000000000000000000001000000"
_V4_MAPPED = "0000000000000000FFFF0000"


def _rows(proc_net: str) -> Iterator[tuple[str, int, str]] | None:
    """(local address hex, local port, state) of every socket; None where /proc/net is absent."""
    tables = []
    for name in ("tcp", "tcp6"):
        try:
            tables.append((Path(proc_net) / name).read_text().splitlines()[1:])
        except OSError:
            continue
    if not tables:
        return None
    return (row for lines in tables for row in _parse(lines))


def _parse(lines: list[str]) -> Iterator[tuple[str, int, str]]:
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        address, _, port_hex = fields[1].rpartition(":")
        try:
            yield address.upper(), int(port_hex, 16), fields[3].upper()
        except ValueError:
            continue


def _loopback(address: str) -> bool:
    if len(address) == 8:  # IPv4, little-endian on x86 and arm64: 127.x.y.z ends in 7F
        return address.endswith("7F")
    return address == _V6_LOOPBACK or (address.startswith(_V4_MAPPED) and address.endswith("7F"))


def listening_ports(exclude: Iterable[int] = (), proc_net: str = "/proc/net") -> set[int] | None:
    """The TCP ports listening on an address other than loopback, less SSH and ``exclude``; None where
    /proc/net is absent (not Linux)."""
    rows = _rows(proc_net)
    if rows is None:
        return None
    skip = {SSH, *exclude}
    return {port for address, port, state in rows if state == LISTEN and not _loopback(address)} - skip


def count_established(ports: Iterable[int], proc_net: str = "/proc/net") -> int | None:
    """Established connections whose local port is one of ``ports``; None where /proc/net is absent
    (not Linux): the caller then does not wait on connections."""
    wanted = set(ports)
    rows = _rows(proc_net)
    if rows is None:
        return None
    return sum(1 for _, port, state in rows if state == ESTABLISHED and port in wanted)
