"""One ARM write per NIC, all NICs at once: a VM with 4 NICs is drained in about the time of one.

Each NIC's read-modify-write is independent of the others (its own etag, its own record), so they run
on threads. The local ledger and absence records share one SQLite connection: every call to them is
serialised by one lock. The first error is raised once every NIC's write has finished, so a failure on
one NIC never leaves another's write half-observed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from drainer.act.actuator import ActionContext

T = TypeVar("T")
R = TypeVar("R")
MAX_THREADS = 8  # Azure allows at most 8 NICs on most VM sizes (more on a few: they queue)


class _Serialised:
    """Every method call of ``inner`` under ``lock``."""

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        self._inner = inner
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def each_nic(
    ctx: ActionContext,
    items: Sequence[T],
    work: Callable[[ActionContext, T, tuple[Any, ...]], R],
    guarded: tuple[Any, ...] = (),
) -> list[R]:
    """``work(ctx, item, guarded)`` for every item, concurrently when there are several; results in
    order. ``guarded``: objects the threads share (e.g. a per-run cache), each call to them serialised
    with the ledger's. Raises the first item's exception (in order) once all are done."""
    if len(items) <= 1:
        return [work(ctx, item, guarded) for item in items]
    lock = threading.RLock()
    shared = dataclasses.replace(
        ctx, ledger=_Serialised(ctx.ledger, lock), absence=_Serialised(ctx.absence, lock)
    )
    proxies = tuple(_Serialised(g, lock) for g in guarded)
    with ThreadPoolExecutor(max_workers=min(len(items), MAX_THREADS), thread_name_prefix="nic") as pool:
        futures = [pool.submit(work, shared, item, proxies) for item in items]
    results: list[R] = []
    errors: list[BaseException] = []
    for future in futures:
        error = future.exception()
        if error is not None:
            errors.append(error)
        else:
            results.append(future.result())
    if errors:
        raise errors[0]
    return results
