"""When the main loop looks for pending jobs to lease: each look is a write transaction.

A look is due when a discovery left a job pending (:meth:`ClaimTiming.hint`), when the
pipeline made room after the last look stopped at capacity, or every poll interval
(retries that fell due, leases requeued, jobs another daemon recorded). Room made after
a look that found no pending job is no reason to look again: in a burst that was one
empty transaction per image. Pure bookkeeping on the caller's clock, so tests drive it.
"""

from __future__ import annotations

import math

__all__ = ["ClaimTiming"]


class ClaimTiming:
    def __init__(self) -> None:
        self._hinted = True  # at start-up: jobs may already be pending
        self._next_at = -math.inf
        self._in_flight_seen = 0
        self._stopped_full = False

    def hint(self) -> None:
        """A job was recorded pending: look at the next turn."""
        self._hinted = True

    def due(self, now: float, in_flight: int, poll_seconds: float) -> bool:
        """Whether to look now (then the caller looks and reports with :meth:`looked`)."""
        made_room = in_flight < self._in_flight_seen and self._stopped_full
        self._in_flight_seen = in_flight
        if not (self._hinted or made_room or now >= self._next_at):
            return False
        self._hinted = False
        self._next_at = now + poll_seconds
        return True

    def looked(self, in_flight: int, *, stopped_full: bool) -> None:
        """The look ended: at capacity (``stopped_full``) or with no pending job left."""
        self._stopped_full = stopped_full
        self._in_flight_seen = in_flight
