"""Established TCP connections to local service ports, read from /proc/net/tcp and tcp6 (Linux)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

ESTABLISHED = "01"  # the st column of /proc/net/tcp (include/net/tcp_states.h: TCP_ESTABLISHED = 1)


def count_established(ports: Iterable[int], proc_net: str = "/proc/net") -> int | None:
    """Established connections whose local port is one of ``ports``; None where /proc/net is absent
    (not Linux): the caller then does not wait on connections."""
    wanted = set(ports)
    total = 0
    found = False
    for name in ("tcp", "tcp6"):
        try:
            lines = (Path(proc_net) / name).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != ESTABLISHED:
                continue
            _, _, port_hex = fields[1].rpartition(":")
            try:
                if int(port_hex, 16) in wanted:
                    total += 1
            except ValueError:
                continue
    return total if found else None
