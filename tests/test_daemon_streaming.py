"""The batcher's streaming side: announced images, chunked feeds, backpressure, no idle wait.

A real batcher thread on a stand-in backend (a function), as in test_daemon_units; its
waiting is driven by its injectable clock. Where a test shows that something did NOT
happen, it waits (bounded) for the event that would show that it did.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import torch
from marginwatch.daemon.batching import TileBatcher


@dataclasses.dataclass(frozen=True)
class FakeInference:
    logits: torch.Tensor
    probabilities: torch.Tensor


def _ids(batch: torch.Tensor) -> FakeInference:
    ids = batch[:, 0, 0, 0].float()
    return FakeInference(torch.stack([ids, -ids], 1), ids.clone())


def _wait(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def _tiles(first: int, count: int) -> torch.Tensor:
    tiles = torch.zeros(count, 3, 2, 2, dtype=torch.uint8)
    tiles[:, 0, 0, 0] = torch.arange(first, first + count, dtype=torch.uint8)
    return tiles


class FakeClock:
    """The batcher's clock, moved by the test only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sends_at_once_when_nothing_else_is_coming() -> None:
    done: list[str] = []
    upstream = [0]
    clock = FakeClock()
    batcher = TileBatcher(_ids, lambda w, i, e: done.append(w),
                          max_batch_tiles=16, max_batch_wait_ms=5000,
                          upstream=lambda: upstream[0], clock=clock)
    with batcher:
        batcher.submit("a", _tiles(0, 1))
        # sent with the clock standing still: not the 5 s wait (no other image queued or read)
        assert _wait(lambda: bool(done))
        # another image being read: it waits for company, up to the wait, then sends
        upstream[0] = 1
        batcher.submit("b", _tiles(0, 1))
        clock.now += 4.9
        batcher.poke()
        assert not _wait(lambda: len(done) == 2, 1.0)  # 4.9 s of 5: still waiting
        upstream[0] = 0
        batcher.poke()  # that image left the readers (e.g. it was a duplicate)
        assert _wait(lambda: len(done) == 2)
        # company expected again: it waits until the clock passes max_batch_wait_ms
        upstream[0] = 1
        batcher.submit("c", _tiles(0, 1))
        assert not _wait(lambda: len(done) == 3, 0.5)
        clock.now += 5.001
        assert _wait(lambda: len(done) == 3)
    assert done == ["a", "b", "c"]


def test_streamed_image_keeps_tile_order_and_feed_blocks_when_full() -> None:
    sizes: list[int] = []
    release = threading.Event()
    results: dict[str, FakeInference] = {}

    def infer(batch: torch.Tensor) -> FakeInference:
        release.wait(5)
        sizes.append(int(batch.shape[0]))
        return _ids(batch)

    batcher = TileBatcher(infer, lambda w, i, e: results.__setitem__(w, i),
                          max_batch_tiles=4, max_batch_wait_ms=0, max_buffered_tiles=4,
                          upstream=lambda: 0)
    fed: list[int] = []

    def reader(ticket) -> None:
        for first in range(0, 20, 3):
            count = min(3, 20 - first)
            assert batcher.feed(ticket, _tiles(first, count))
            fed.append(first + count)

    with batcher:
        ticket = batcher.open("mosaic", 20)
        thread = threading.Thread(target=reader, args=(ticket,))
        thread.start()
        assert _wait(lambda: bool(fed))
        # the backend holds its first batch: the reader stops once 4 more tiles wait
        assert not _wait(lambda: fed[-1] > 4 + 4 + 3 or not thread.is_alive(), 1.0), fed
        release.set()
        thread.join(5)
        assert _wait(lambda: "mosaic" in results)
    assert results["mosaic"].probabilities.tolist() == list(range(20))
    assert max(sizes) <= 4 and sum(sizes) == 20


def test_failed_batch_reported_once_and_reader_told_to_stop() -> None:
    outcomes: list[tuple[str, object]] = []

    def infer(batch):
        raise RuntimeError("device lost")

    batcher = TileBatcher(infer, lambda w, i, e: outcomes.append((w, e)),
                          max_batch_tiles=2, max_batch_wait_ms=0, upstream=lambda: 0)
    with batcher:
        ticket = batcher.open("a", 6)
        assert batcher.feed(ticket, _tiles(0, 2))
        assert _wait(lambda: bool(outcomes))
        assert not batcher.feed(ticket, _tiles(2, 2))  # not wanted: already failed
        assert not batcher.cancel(ticket)  # the batcher reported it; the reader must not
    assert [w for w, _ in outcomes] == ["a"] and isinstance(outcomes[0][1], RuntimeError)


def test_cancelled_image_is_dropped_and_stop_unblocks_a_waiting_reader() -> None:
    release = threading.Event()
    outcomes: list[str] = []

    def infer(batch):
        release.wait(5)
        return _ids(batch)

    batcher = TileBatcher(infer, lambda w, i, e: outcomes.append(w),
                          max_batch_tiles=2, max_batch_wait_ms=0, max_buffered_tiles=2,
                          upstream=lambda: 0)
    batcher.start()
    a = batcher.open("a", 10)
    assert batcher.feed(a, _tiles(0, 2))
    assert batcher.cancel(a)  # a read error part-way: the reader reports it
    b = batcher.open("b", 10)
    assert batcher.feed(b, _tiles(0, 2))
    assert batcher.feed(b, _tiles(2, 2))
    answer: list[bool] = []
    waiting = threading.Thread(target=lambda: answer.append(batcher.feed(b, _tiles(4, 2))))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not answer  # blocked: the buffer is full
    batcher.stop(drain=False, timeout=0.1)
    waiting.join(5)
    release.set()
    batcher.stop(drain=False, timeout=5)
    assert answer == [False] and "a" not in outcomes
    assert batcher.abandoned() == ["b"]
