"""CPU time of a running process, for the benchmarks (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid``'s live threads: the sum of their ``schedstat`` run times
    (nanoseconds; a daemon at 0.5 % of a CPU uses only 15 clock ticks in 30 s, too coarse to tell
    1.1x from 1.3x), or the process's user + system ticks where schedstat is missing."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total / 1e9
