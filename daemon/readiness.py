"""When a file in the export folder is complete enough to be recorded as a job.

A scanner writes slowly, or to a temporary name and then renames. A file is *ready*
when its size and mtime have not changed for ``settle_seconds`` (default 0: an optional
extra wait) AND one of:

- *by format*: a close-after-write event arrived (inotify), or it was renamed or moved
  into the folder under a candidate name, the file is unchanged since, and its
  structure is complete (:func:`~.completeness.structure_complete`: TIFF byte ranges,
  PNG IEND, JPEG EOI, BMP size). Ready at the first poll after the event; no waiting.
- *by stable polls*: ``stable_polls`` consecutive polls (one every
  ``poll_interval_seconds``) saw it unchanged. The only signal on SMB/NFS shares and for
  files found by a scan, and the fallback after an event for a format that cannot be
  judged, or for a file that stays incomplete (truncated for good: it is recorded, and
  the reader fails it with a reason, so it still reaches a final state).

The tracker is bookkeeping with an injected ``clock``, ``stat`` (lstat by default: a
symbolic link is judged by itself, never followed) and ``complete`` (the format check;
it opens the file read-only for a moment and reads headers only), so tests drive time
instead of sleeping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .completeness import structure_complete
from .observer import SightingKind, is_candidate_inode

__all__ = ["ReadinessTracker", "ReadyFile"]


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A settled candidate: what is recorded as a pending job."""

    rel_path: str
    size: int
    mtime_ns: int
    by: str = "polls"  # "format" (event + complete structure) or "polls" (stable polls)
    inode: int | None = None  # st_ino: with size and mtime, how a renamed file is known


@dataclass(slots=True)
class _Track:
    signature: tuple[int, int, int]  # (size, mtime_ns, inode) at the last poll or sighting
    changed_at: float  # clock time the signature last changed
    stable_polls: int = 0  # polls in a row that saw the same signature
    trigger: tuple[int, int, int] | None = None  # signature when a close/move was seen
    checked: tuple[int, int, int] | None = None  # signature last judged by the format check


class ReadinessTracker:
    """Track candidate paths until they are ready (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        settle_seconds: float,
        stable_polls: int,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[str], os.stat_result] = os.lstat,
        complete: Callable[[str], bool | None] = structure_complete,
    ) -> None:
        self.root = os.fspath(root)
        self.settle_seconds = settle_seconds
        self.stable_polls = stable_polls
        self._clock = clock
        self._stat = stat
        self._complete = complete
        self._tracks: dict[str, _Track] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, rel_path: object) -> bool:
        return rel_path in self._tracks

    def _signature(self, rel_path: str) -> tuple[int, int, int] | None:
        try:
            st = self._stat(os.path.join(self.root, rel_path))
        except OSError:
            return None
        if not is_candidate_inode(st):
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)  # a replaced file is a change too

    def note(self, kind: SightingKind, rel_path: str) -> None:
        """Take one sighting into account (``folder`` sightings are not for here)."""
        if kind == "deleted":
            self._tracks.pop(rel_path, None)
            return
        sig = self._signature(rel_path)
        if sig is None:
            self._tracks.pop(rel_path, None)
            return
        now = self._clock()
        track = self._tracks.get(rel_path)
        if track is None:
            track = self._tracks[rel_path] = _Track(signature=sig, changed_at=now)
        elif track.signature != sig:
            track.signature = sig
            track.changed_at = now
            track.stable_polls = 0
        if kind in ("closed", "moved_in"):
            track.trigger = sig

    def poll(self) -> list[ReadyFile]:
        """Re-stat every tracked path; return (and stop tracking) the ready ones."""
        now = self._clock()
        ready: list[ReadyFile] = []
        for rel_path in list(self._tracks):
            track = self._tracks[rel_path]
            sig = self._signature(rel_path)
            if sig is None:  # deleted, or replaced by something that is not a file
                del self._tracks[rel_path]
                continue
            if sig != track.signature:
                track.signature = sig
                track.changed_at = now
                track.stable_polls = 0
                continue
            track.stable_polls += 1
            if now - track.changed_at < self.settle_seconds:
                continue
            by = self._ready_by(rel_path, track, sig)
            if by is not None:
                del self._tracks[rel_path]
                ready.append(ReadyFile(rel_path, sig[0], sig[1], by, inode=sig[2]))
        return ready

    def _ready_by(self, rel_path: str, track: _Track, sig: tuple[int, int, int]) -> str | None:
        """"format", "polls" or None (not ready) for a settled, unchanged track."""
        if track.trigger == sig and track.checked != sig:
            track.checked = sig  # the same bytes are judged once
            if self._complete(os.path.join(self.root, rel_path)):
                return "format"
        return "polls" if track.stable_polls >= self.stable_polls else None
