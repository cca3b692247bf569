"""Cross-job tile batching: one inference thread feeds the backend full batches.

Readers hand over each prepared image's tiles ``(T, 3, H, W)``; the batcher cuts
batches of up to ``max_batch_tiles`` tiles *across* images (GPU efficiency) and never
holds the oldest waiting tile longer than ``max_batch_wait_ms`` waiting for company.
Each batch's :class:`Inference` ``(N, ...)`` is split back per image; when an image's
last tile is done, its pieces are joined in tile order and ``on_done(work, inference,
None)`` is called (from this thread). A backend failure is reported for every image
with a tile in the failed batch as ``on_done(work, None, exc)``.

The inference result type is the engine's: a dataclass whose tensor/array fields all
have the tile axis first (logits ``(N, 2)``, probabilities ``(N,)``, cams ``(N, h, w)``);
:func:`concat_inferences` and :func:`slice_inference` treat every such field alike.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
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
    work: Any
    tiles: torch.Tensor  # (T, 3, H, W)
    arrived: float
    next_tile: int = 0
    parts: list[Any] = dataclasses.field(default_factory=list)

    @property
    def remaining(self) -> int:
        return int(self.tiles.shape[0]) - self.next_tile


OnDone = Callable[[Any, Any, BaseException | None], None]


class TileBatcher:
    """The inference thread. ``infer(batch (N,3,H,W)) -> Inference``.

    Use as a context manager, or ``start()`` / ``stop()``. ``stop(drain=True)``
    finishes what was submitted first; ``drain=False`` abandons it (the caller
    releases those jobs). ``clock`` is injectable.
    """

    def __init__(
        self,
        infer: Callable[[torch.Tensor], Any],
        on_done: OnDone,
        *,
        max_batch_tiles: int,
        max_batch_wait_ms: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._infer = infer
        self._on_done = on_done
        self.max_batch_tiles = max_batch_tiles
        self.max_batch_wait_ms = max_batch_wait_ms
        self._clock = clock
        self._inbox: queue.Queue[_Entry] = queue.Queue()
        self._pending: collections.deque[_Entry] = collections.deque()
        self._stop = threading.Event()
        self._drain = True
        self._thread = threading.Thread(target=self._run, name="mw-inference", daemon=True)
        self.batches = 0
        self.tiles = 0

    # --- control ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Any, tiles: torch.Tensor) -> None:
        """Queue one image's tiles ``(T, 3, H, W)`` (T >= 1)."""
        self._inbox.put(_Entry(work, tiles, self._clock()))

    def should_keep_running(self) -> bool:
        if not self._stop.is_set():
            return True
        return self._drain and bool(self._pending or not self._inbox.empty())

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        self._drain = drain
        self._stop.set()
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
        out = [e.work for e in self._pending]
        while True:
            try:
                out.append(self._inbox.get_nowait().work)
            except queue.Empty:
                return out

    # --- the thread ----------------------------------------------------------------------

    def _take_inbox(self, timeout: float | None) -> None:
        try:
            entry = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except queue.Empty:
            return
        self._pending.append(entry)
        while True:  # whatever else is already there
            try:
                self._pending.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _run(self) -> None:
        wait_s = self.max_batch_wait_ms / 1000.0
        while self.should_keep_running():
            if not self._pending:
                self._take_inbox(timeout=0.1)
                continue
            self._take_inbox(timeout=None)
            deadline = self._pending[0].arrived + wait_s
            while (
                sum(e.remaining for e in self._pending) < self.max_batch_tiles
                and self._clock() < deadline
                and not self._stop.is_set()
            ):
                self._take_inbox(timeout=max(0.001, deadline - self._clock()))
            self._run_one_batch()
        if not self._drain:
            logger.info("inference stopped with %d image(s) unfinished", len(self._pending))

    def _run_one_batch(self) -> None:
        members: list[tuple[_Entry, int, int]] = []  # entry, first tile, tile count
        room = self.max_batch_tiles
        for entry in self._pending:
            if room == 0:
                break
            take = min(room, entry.remaining)
            members.append((entry, entry.next_tile, take))
            room -= take
        batch = torch.cat([e.tiles[s : s + n] for e, s, n in members], dim=0)
        try:
            result = self._infer(batch)
        except Exception as exc:  # backend failure: every member image fails with it
            logger.error("inference batch of %d tile(s) failed: %s", batch.shape[0], exc)
            for entry, _, _ in members:
                self._pending.remove(entry)
                self._on_done(entry.work, None, exc)
            return
        self.batches += 1
        self.tiles += int(batch.shape[0])
        offset = 0
        for entry, start, count in members:
            entry.parts.append(slice_inference(result, offset, offset + count))
            entry.next_tile = start + count
            offset += count
            if entry.remaining == 0:
                self._pending.remove(entry)
                try:
                    joined = concat_inferences(entry.parts)
                except Exception as exc:  # a shape mismatch is a bug: report, keep going
                    self._on_done(entry.work, None, exc)
                    continue
                self._on_done(entry.work, joined, None)
