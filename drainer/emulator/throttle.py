"""ARM throttling as documented, for the emulator (off unless a scenario turns it on).

Two layers, as Azure applies them (learn.microsoft.com/azure/azure-resource-manager/management/
request-limits-and-throttling):

- Azure Resource Manager, per security principal and subscription, a token bucket per operation
  kind: reads 250 tokens refilled at 25 per second, writes 200 refilled at 10 per second (the
  limits since 2024). Every VM's managed identity is its own principal.
- The Microsoft.Network resource provider, per subscription and region: 10,000 reads (GET) and
  1,000 writes/deletes (PUT) per 5 minutes, for every principal together.

Over either limit: 429 with ``Retry-After`` (seconds until the request would be admitted). Figures are
settable so a compressed benchmark can scale them with its clock.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Bucket:
    size: float
    refill: float  # tokens per second
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        if self.tokens < 0:
            self.tokens, self.at = self.size, now
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.refill if self.refill > 0 else 3600.0


@dataclass
class Window:
    limit: int
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def take(self, now: float) -> float:
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        if len(self.times) < self.limit:
            self.times.append(now)
            return 0.0
        return self.times[0] + self.seconds - now

    def remaining(self) -> int:
        return max(0, self.limit - len(self.times))


@dataclass
class ThrottleSettings:
    enabled: bool = False
    arm_read: tuple[float, float] = (250, 25)  # bucket size, refill per second; per principal
    arm_write: tuple[float, float] = (200, 10)
    rp_read: tuple[int, float] = (10_000, 300.0)  # requests per window seconds; per subscription
    rp_write: tuple[int, float] = (1_000, 300.0)
    latency: float = 0.0  # seconds added to every ARM answer (a distant region), throttled or not


class Throttle:
    """Admission of ARM requests; counts reads, writes and 429s per principal."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings = ThrottleSettings()
        self._buckets: dict[tuple[str, bool], Bucket] = {}
        self._rp = {False: Window(*self.settings.rp_read), True: Window(*self.settings.rp_write)}
        self.stats: dict[str, dict[str, int]] = {}

    def configure(self, data: dict[str, Any]) -> None:
        """Raises KeyError/TypeError/ValueError for a bad setting."""
        with self.lock:
            current = self.settings
            self.settings = ThrottleSettings(
                enabled=bool(data.get("enabled", current.enabled)),
                arm_read=_pair(data.get("arm_read", current.arm_read)),
                arm_write=_pair(data.get("arm_write", current.arm_write)),
                rp_read=_window(data.get("rp_read", current.rp_read)),
                rp_write=_window(data.get("rp_write", current.rp_write)),
                latency=float(data.get("latency", current.latency)),
            )
            self._buckets.clear()
            self._rp = {False: Window(*self.settings.rp_read), True: Window(*self.settings.rp_write)}

    def reset_stats(self) -> None:
        with self.lock:
            self.stats.clear()

    def admit(self, principal: str, write: bool, now: float) -> tuple[float, dict[str, str]]:
        """(0, headers) when admitted, else (seconds to wait, headers). Counts the request."""
        with self.lock:
            counts = self.stats.setdefault(principal, {"reads": 0, "writes": 0, "throttled": 0})
            counts["writes" if write else "reads"] += 1
            if not self.settings.enabled:
                return 0.0, {}
            size, refill = self.settings.arm_write if write else self.settings.arm_read
            bucket = self._buckets.setdefault((principal, write), Bucket(size, refill))
            wait = bucket.take(now)
            if wait == 0:
                wait = self._rp[write].take(now)
                if wait > 0:
                    bucket.tokens = min(bucket.size, bucket.tokens + 1)  # not spent: refused upstream
            kind = "writes" if write else "reads"
            headers = {f"x-ms-ratelimit-remaining-subscription-{kind}": str(int(bucket.tokens))}
            if wait > 0:
                counts["throttled"] += 1
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return wait, headers


def _pair(value: Any) -> tuple[float, float]:
    size, rate = value
    return float(size), float(rate)


def _window(value: Any) -> tuple[int, float]:
    limit, seconds = value
    return int(limit), float(seconds)
