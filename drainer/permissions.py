"""Kept for callers of the old API: ``drainer.trust`` holds the checks now."""

from __future__ import annotations

from pathlib import Path

from drainer.trust import TrustError, check


def unsafe_reason(path: Path) -> str | None:
    """Why ``path`` must not be trusted (every component from /, see ``drainer.trust``), or None."""
    try:
        check(str(path))
    except TrustError as exc:
        return str(exc)
    return None
