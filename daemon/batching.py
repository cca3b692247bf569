"""Cross-job tile batching: one inference thread feeds the backend full batches.

A reader announces an image (:meth:`TileBatcher.open`: how many tiles will come) and
then streams its tiles ``(n, 3, H, W)`` (uint8 RGB, or normalised float) chunk by chunk
(:meth:`TileBatcher.feed`). ``feed`` blocks while ``max_buffered_tiles`` tiles wait
for the backend (backpressure), so a 529-tile mosaic is never in memory whole. The
batcher cuts batches of up to ``max_batch_tiles`` tiles *across* images (GPU
efficiency); it waits for company at most ``max_batch_wait_ms`` after the oldest
waiting tile arrived, and not at all when ``upstream()`` says no other image is queued
or being read and no announced image has tiles still to come. Each batch's
:class:`Inference` ``(N, ...)`` is split back per image; when an image's last tile is
done, its pieces are joined in tile order and ``on_done(work, inference, None)`` is
called (from this thread). A backend failure is reported for every image
with a tile in the failed batch as ``on_done(work, None, exc)``.

The inference result type is the engine's: a dataclass whose tensor/array fields all
have the tile axis first (logits ``(N, 2)``, probabilities ``(N,)``, cams ``(N, h, w)``);
:func:`concat_inferences` and :func:`slice_inference` treat every such field alike.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["TileBatcher", "concat_inferences", "slice_inference"]

logger = logging.getLogger(__name__)


def _is_batched(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def slice_inference(inference: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` (tile axis) of every batched field."""
    changes = {
        f.name: getattr(inference, f.name)[start:stop]
        for f in dataclasses.fields(inference)
        if _is_batched(getattr(inference, f.name))
    }
    return dataclasses.replace(inference, **changes)


def concat_inferences(parts: Sequence[Any]) -> Any:
    """Join per-batch pieces of one image's inference along the tile axis, in order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = torch.cat([getattr(p, f.name) for p in parts], dim=0)
        elif isinstance(value, np.ndarray):
            changes[f.name] = np.concatenate([getattr(p, f.name) for p in parts], axis=0)
    return dataclasses.replace(first, **changes)


@dataclasses.dataclass(eq=False)
class _Entry:
    """One announced image. ``state``: open -> done | failed | cancelled (first wins)."""

    work: Any
    expected: int  # tiles the image has
    chunks: collections.deque[torch.Tensor] = dataclasses.field(
        default_factory=collections.deque)
    buffered: int = 0  # tiles received and not yet taken into a batch
    received: int = 0
    taken: int = 0  # tiles taken into batches (in tile order)
    inferred: int = 0
    waiting_since: float | None = None  # when the oldest buffered tile arrived
    parts: list[Any] = dataclasses.field(default_factory=list)
    state: str = "open"

    def take(self, count: int) -> list[torch.Tensor]:
        """The next ``count`` buffered tiles, as pieces of this image's chunks."""
        pieces: list[torch.Tensor] = []
        while count > 0:
            chunk = self.chunks[0]
            if int(chunk.shape[0]) <= count:
                pieces.append(self.chunks.popleft())
            else:
                pieces.append(chunk[:count])
                self.chunks[0] = chunk[count:]
            count -= int(pieces[-1].shape[0])
        return pieces


Ticket = _Entry  # what open() returns and feed()/cancel() take

OnDone = Callable[[Any, Any, BaseException | None], None]


class TileBatcher:
    """The inference thread. ``infer(batch (N,3,H,W)) -> Inference``.

    Use as a context manager, or ``start()`` / ``stop()``. ``stop(drain=True)``
    finishes the tiles already received first; ``drain=False`` abandons them (the
    caller releases those jobs). ``upstream()`` returns how many images are queued or
    being read before they reach the batcher; without it the batcher always waits
    up to ``max_batch_wait_ms`` for company. ``clock`` is injectable.
    """

    def __init__(
        self,
        infer: Callable[[torch.Tensor], Any],
        on_done: OnDone,
        *,
        max_batch_tiles: int,
        max_batch_wait_ms: float,
        max_buffered_tiles: int | None = None,
        upstream: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._infer = infer
        self._on_done = on_done
        self.max_batch_tiles = max_batch_tiles
        self.max_batch_wait_ms = max_batch_wait_ms
        self._max_buffered = max_buffered_tiles
        self._upstream = upstream
        self._clock = clock
        self._cv = threading.Condition()
        self._pending: collections.deque[_Entry] = collections.deque()
        self._buffered = 0  # tiles received, not yet in a batch (all entries)
        self._stop = threading.Event()
        self._drain = True
        self._thread = threading.Thread(target=self._run, name="mw-inference", daemon=True)
        self.batches = 0
        self.tiles = 0

    @property
    def max_buffered_tiles(self) -> int:
        return self._max_buffered or 2 * self.max_batch_tiles

    # --- control ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def open(self, work: Any, count: int) -> Ticket:
        """Announce an image of ``count`` tiles (>= 1); feed them in order with :meth:`feed`."""
        entry = _Entry(work, int(count))
        with self._cv:
            self._pending.append(entry)
            self._cv.notify_all()
        return entry

    def feed(self, ticket: Ticket, tiles: torch.Tensor, *, block: bool = True) -> bool:
        """Hand over the image's next tiles ``(n, 3, H, W)``.

        Blocks while ``max_buffered_tiles`` tiles already wait (unless ``block`` is
        false). Returns False when the tiles are not wanted any more: the image failed
        in an earlier batch (already reported), was cancelled, or the batcher is
        stopping; the reader then stops reading it.
        """
        count = int(tiles.shape[0])
        with self._cv:
            while (block and self._buffered > 0 and self._buffered + count > self.max_buffered_tiles
                   and ticket.state == "open" and not self._stop.is_set()):
                self._cv.wait(0.5)
            if ticket.state != "open" or (self._stop.is_set() and not self._drain):
                return False
            if count:
                ticket.chunks.append(tiles)
                ticket.buffered += count
                ticket.received += count
                self._buffered += count
                if ticket.waiting_since is None:
                    ticket.waiting_since = self._clock()
                self._cv.notify_all()
        return True

    def cancel(self, ticket: Ticket) -> bool:
        """The reader gives up on an image (a read error): drop it from the batcher.

        Returns True when the caller must report the failure, False when the batcher
        already reported one for it (a failed batch) or it is done.
        """
        with self._cv:
            if ticket.state != "open":
                return False
            ticket.state = "cancelled"
            self._forget(ticket)
            return True

    def submit(self, work: Any, tiles: torch.Tensor) -> None:
        """Queue one image's tiles ``(T, 3, H, W)`` (T >= 1) at once, without blocking."""
        self.feed(self.open(work, int(tiles.shape[0])), tiles, block=False)

    def poke(self) -> None:
        """Wake the thread: ``upstream()`` changed (an image left the readers)."""
        with self._cv:
            self._cv.notify_all()

    def should_keep_running(self) -> bool:
        if not self._stop.is_set():
            return True
        with self._cv:
            return self._drain and self._buffered > 0

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        self._drain = drain
        self._stop.set()
        self.poke()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> TileBatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def abandoned(self) -> list[Any]:
        """After ``stop(drain=False)``: the work items that never completed."""
        with self._cv:
            return [e.work for e in self._pending]

    # --- the thread ----------------------------------------------------------------------

    def _forget(self, entry: _Entry) -> None:
        """Drop an entry and its buffered tiles (lock held)."""
        if entry in self._pending:
            self._pending.remove(entry)
        self._buffered -= entry.buffered
        entry.buffered = 0
        entry.chunks.clear()
        self._cv.notify_all()

    def _company_expected(self) -> bool:
        """Whether more tiles may come soon: a known image still streaming, or upstream."""
        if self._upstream is None:
            return True
        if any(e.received < e.expected for e in self._pending):
            return True
        return self._upstream() > 0

    def _run(self) -> None:
        while self.should_keep_running():
            with self._cv:
                if self._buffered == 0:
                    self._cv.wait(0.1)
                    continue
                wait_s = self.max_batch_wait_ms / 1000.0
                oldest = min(e.waiting_since for e in self._pending
                             if e.waiting_since is not None)
                deadline = oldest + wait_s
                while (
                    self._buffered < self.max_batch_tiles
                    and self._clock() < deadline
                    and not self._stop.is_set()
                    and self._company_expected()
                ):
                    self._cv.wait(max(0.001, min(0.05, deadline - self._clock())))
                if self._stop.is_set() and not self._drain:
                    break
                members = self._take_batch()
            self._run_one_batch(members)
        if not self._drain:
            logger.info("inference stopped with %d image(s) unfinished", len(self._pending))

    def _take_batch(self) -> list[tuple[_Entry, list[torch.Tensor]]]:
        """Up to ``max_batch_tiles`` buffered tiles, oldest image first (lock held)."""
        members: list[tuple[_Entry, list[torch.Tensor]]] = []
        room = self.max_batch_tiles
        now = self._clock()
        for entry in self._pending:
            if room == 0:
                break
            take = min(room, entry.buffered)
            if take == 0:
                continue
            members.append((entry, entry.take(take)))
            entry.buffered -= take
            entry.taken += take
            entry.waiting_since = now if entry.buffered else None
            self._buffered -= take
            room -= take
        self._cv.notify_all()  # room for blocked readers
        return members

    def _run_one_batch(self, members: list[tuple[_Entry, list[torch.Tensor]]]) -> None:
        pieces = [p for _, parts in members for p in parts]
        batch = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        try:
            result = self._infer(batch)
        except Exception as exc:  # backend failure: every member image fails with it
            logger.error("inference batch of %d tile(s) failed: %s", batch.shape[0], exc)
            for entry, _ in members:
                with self._cv:
                    if entry.state != "open":
                        continue
                    entry.state = "failed"
                    self._forget(entry)
                self._on_done(entry.work, None, exc)
            return
        self.batches += 1
        self.tiles += int(batch.shape[0])
        offset = 0
        for entry, parts in members:
            count = sum(int(p.shape[0]) for p in parts)
            piece = slice_inference(result, offset, offset + count)
            offset += count
            with self._cv:
                if entry.state != "open":  # cancelled by its reader meanwhile
                    continue
                entry.parts.append(piece)
                entry.inferred += count
                if entry.inferred < entry.expected:
                    continue
                entry.state = "done"
                self._forget(entry)
            try:
                joined = concat_inferences(entry.parts)
            except Exception as exc:  # a shape mismatch is a bug: report, keep going
                self._on_done(entry.work, None, exc)
                continue
            self._on_done(entry.work, joined, None)
