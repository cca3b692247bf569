"""The one check every Store method applies to its ``now`` argument."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["aware_utc"]


def aware_utc(now: datetime | None) -> datetime:
    """``now`` if timezone-aware, the current UTC time if None; a naive one is refused."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"now={now!r} is naive; pass a timezone-aware UTC datetime")
    return now
