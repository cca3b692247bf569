"""Unit tests of the daemon's parts that need neither engine nor storage.

Readiness runs on an injected clock (no sleeping); the observer and the scan run on
real folders; the batcher runs a real thread on a stand-in backend (a function).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import time

import pytest
import torch
from marginwatch.daemon._claim_timing import ClaimTiming
from marginwatch.daemon._stages import inference_threads
from marginwatch.daemon.batching import TileBatcher, concat_inferences, slice_inference
from marginwatch.daemon.observer import FolderObserver, PathFilter, Sighting, scan_folder
from marginwatch.daemon.readiness import ReadinessTracker, ReadyFile

IMAGE_GLOBS = ["*.tif", "*.tiff", "*.png"]
IGNORE_GLOBS = ["*.tmp", "*.part", ".*", "*~"]


@pytest.fixture
def path_filter() -> PathFilter:
    return PathFilter(IMAGE_GLOBS, IGNORE_GLOBS)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_exports_are_declared() -> None:
    import marginwatch.daemon as daemon

    for name in daemon.__all__:
        assert getattr(daemon, name) is not None


def test_claims_look_when_a_job_may_be_pending_and_not_after_an_empty_look() -> None:
    claims = ClaimTiming()
    assert claims.due(100.0, 0, poll_seconds=1.0)  # start-up: jobs may be pending
    claims.looked(10, stopped_full=True)  # a burst: the pipeline filled up
    assert not claims.due(100.1, 10, poll_seconds=1.0)  # nothing changed
    assert claims.due(100.2, 9, poll_seconds=1.0)  # room made while jobs were left over
    claims.looked(9, stopped_full=False)  # ... and none was left
    for in_flight in range(8, -1, -1):  # the rest finishing: no empty look per image
        assert not claims.due(100.3, in_flight, poll_seconds=1.0)
    claims.hint()  # a discovery recorded a job pending
    assert claims.due(100.4, 0, poll_seconds=1.0)
    claims.looked(0, stopped_full=False)
    assert not claims.due(101.3, 0, poll_seconds=1.0)
    assert claims.due(101.4, 0, poll_seconds=1.0)  # the poll interval: retries fall due


def test_inference_threads_leave_the_readers_their_cores() -> None:
    from marginwatch.engine.config import Config

    cpus = len(os.sched_getaffinity(0))
    config = Config()  # workers = 1, inference_threads = 0 (auto)
    assert inference_threads(config, environ={}) == max(1, cpus - 1)
    config.daemon.workers = 64
    assert inference_threads(config, environ={}) == 1  # never none
    assert inference_threads(config, environ={"OMP_NUM_THREADS": "3"}) == 3  # the operator's
    assert inference_threads(config, environ={"OMP_NUM_THREADS": "lots"}) == 1  # not a number
    config.daemon.inference_threads = 5
    assert inference_threads(config, environ={"OMP_NUM_THREADS": "3"}) == 5  # the setting first


def test_path_filter(path_filter: PathFilter) -> None:
    assert path_filter.is_candidate("case1/a.tif")
    assert path_filter.is_candidate("case1/A.TIFF")
    assert not path_filter.is_candidate("case1/a.tif.part")
    assert not path_filter.is_candidate("case1/.a.tif")
    assert not path_filter.is_candidate(".sync/a.tif")
    assert not path_filter.is_candidate("case1/notes.txt")
    assert not path_filter.is_candidate("../a.tif")


def test_scan_skips_dirs_fifos_and_temp_names(tmp_path, path_filter) -> None:
    (tmp_path / "case1").mkdir()
    (tmp_path / "case1" / "a.tif").write_bytes(b"x")
    (tmp_path / "case1" / "b.tif.part").write_bytes(b"x")
    (tmp_path / "case1" / "x.tif").mkdir()  # a directory named like an image
    (tmp_path / "case1" / "x.tif" / "inner.tif").write_bytes(b"x")
    os.mkfifo(tmp_path / "case1" / "pipe.tif")
    (tmp_path / "case1" / "link.tif").symlink_to("/etc/passwd")
    (tmp_path / "linkdir").symlink_to("/etc")  # never descended into
    found = sorted(scan_folder(tmp_path, path_filter))
    assert found == ["case1/a.tif", "case1/link.tif", "case1/x.tif/inner.tif"]
    assert list(scan_folder(tmp_path, path_filter, under="case1/x.tif")) == [
        "case1/x.tif/inner.tif"
    ]


def _stat_of(table: dict[str, tuple[int, int]]):
    def stat(path: str) -> os.stat_result:
        name = os.path.basename(path)
        if name not in table:
            raise FileNotFoundError(path)
        size, mtime = table[name]
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, size, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime, 0))

    return stat


def test_readiness_needs_settle_and_a_trigger() -> None:
    clock = FakeClock()
    files = {"a.tif": (10, 1)}
    tracker = ReadinessTracker("/x", settle_seconds=2, stable_polls=3, clock=clock,
                               stat=_stat_of(files), complete=lambda path: True)
    tracker.note("changed", "a.tif")
    clock.now += 1
    files["a.tif"] = (20, 2)  # still growing
    assert tracker.poll() == []
    tracker.note("closed", "a.tif")  # closed after the last write
    clock.now += 1.5
    assert tracker.poll() == []  # unchanged only 1.5 s (settle_seconds is an extra wait)
    clock.now += 0.6
    assert tracker.poll() == [ReadyFile("a.tif", 20, 2, "format", inode=0)]
    assert "a.tif" not in tracker


def test_readiness_close_then_write_again_is_not_ready() -> None:
    clock = FakeClock()
    files = {"a.tif": (10, 1)}
    tracker = ReadinessTracker("/x", settle_seconds=1, stable_polls=99, clock=clock,
                               stat=_stat_of(files), complete=lambda path: True)
    tracker.note("closed", "a.tif")
    files["a.tif"] = (30, 5)  # reopened and written after the close
    clock.now += 5
    assert tracker.poll() == []  # the change resets the settle clock
    clock.now += 5
    assert tracker.poll() == []  # the close no longer describes this content
    tracker.note("closed", "a.tif")
    clock.now += 1
    assert tracker.poll() == [ReadyFile("a.tif", 30, 5, "format", inode=0)]


def test_readiness_by_stable_polls_alone() -> None:
    clock = FakeClock()
    files = {"a.tif": (10, 1)}
    judged: list[str] = []
    tracker = ReadinessTracker("/x", settle_seconds=1, stable_polls=3, clock=clock,
                               stat=_stat_of(files), complete=lambda p: judged.append(p) or True)
    tracker.note("scan", "a.tif")
    ready = []
    for _ in range(3):
        assert ready == []
        clock.now += 1
        ready = tracker.poll()
    assert ready == [ReadyFile("a.tif", 10, 1, "polls", inode=0)]
    assert judged == []  # a file found by a scan needs stable polls, not the format check


def test_readiness_by_format_needs_no_wait_and_judges_each_content_once() -> None:
    clock = FakeClock()
    files = {"a.tif": (10, 1), "b.xyz": (5, 1)}
    verdicts: dict[str, bool | None] = {"/x/a.tif": False, "/x/b.xyz": None}
    judged: list[str] = []

    def complete(path: str) -> bool | None:
        judged.append(path)
        return verdicts[path]

    tracker = ReadinessTracker("/x", settle_seconds=0, stable_polls=4, clock=clock,
                               stat=_stat_of(files), complete=complete)
    tracker.note("closed", "a.tif")  # truncated: the format check says not yet
    tracker.note("moved_in", "b.xyz")  # a format the check cannot judge
    assert tracker.poll() == []
    assert tracker.poll() == []
    assert judged == ["/x/a.tif", "/x/b.xyz"]  # the same bytes are not judged again
    files["a.tif"] = (20, 2)  # the rest of the file arrives and it is closed again
    verdicts["/x/a.tif"] = True
    tracker.note("closed", "a.tif")
    assert tracker.poll() == [ReadyFile("a.tif", 20, 2, "format", inode=0)]  # at once, no settle
    # the unjudgeable file falls back to stable polls (its fourth unchanged poll)
    assert tracker.poll() == [ReadyFile("b.xyz", 5, 1, "polls", inode=0)]


def test_readiness_incomplete_for_good_still_becomes_ready_by_polls() -> None:
    clock = FakeClock()
    files = {"a.tif": (10, 1)}
    tracker = ReadinessTracker("/x", settle_seconds=0, stable_polls=2, clock=clock,
                               stat=_stat_of(files), complete=lambda path: False)
    tracker.note("closed", "a.tif")
    assert tracker.poll() == []
    # recorded after stable polls: the reader fails it with a reason (a final state)
    assert tracker.poll() == [ReadyFile("a.tif", 10, 1, "polls", inode=0)]


def test_readiness_forgets_deleted_files() -> None:
    clock = FakeClock()
    files = {"a.tif": (10, 1)}
    tracker = ReadinessTracker("/x", settle_seconds=0, stable_polls=5, clock=clock,
                               stat=_stat_of(files))
    tracker.note("changed", "a.tif")
    del files["a.tif"]
    assert tracker.poll() == [] and len(tracker) == 0
    files["a.tif"] = (1, 1)
    tracker.note("changed", "a.tif")
    tracker.note("deleted", "a.tif")
    assert len(tracker) == 0


@pytest.mark.parametrize("kind", ["inotify", "polling"])
def test_observer_reports_new_case_folders_and_renames(tmp_path, path_filter, kind) -> None:
    sink: queue.Queue[Sighting] = queue.Queue()
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "export"
    root.mkdir()
    with FolderObserver(root, path_filter, sink, kind=kind, poll_interval_seconds=0.1):
        time.sleep(0.3)
        (root / "case9").mkdir()
        time.sleep(0.3)
        (root / "case9" / "a.tif.part").write_bytes(b"123")
        os.rename(root / "case9" / "a.tif.part", root / "case9" / "a.tif")
        (outside / "b.tif").write_bytes(b"456")
        os.rename(outside / "b.tif", root / "case9" / "b.tif")
        deadline = time.monotonic() + 5
        seen: set[tuple[str, str]] = set()
        while time.monotonic() < deadline:
            try:
                s = sink.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.add((s.kind, s.rel_path))
            rels = {r for k, r in seen if k != "deleted"}
            if {"case9/a.tif", "case9/b.tif"} <= rels:
                break
    rels = {r for k, r in seen if k != "deleted"}
    assert {"case9/a.tif", "case9/b.tif"} <= rels
    assert not any(r.endswith(".part") for _, r in seen)
    if kind == "inotify":
        assert ("moved_in", "case9/a.tif") in seen
        assert ("moved_in", "case9/b.tif") in seen  # renamed in from outside: a move, too


def _wait(predicate, seconds: float) -> bool:  # noqa: ANN001
    """Poll ``predicate`` for up to ``seconds`` of real time; its last value."""
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


@dataclasses.dataclass
class FakeInference:
    logits: torch.Tensor
    probabilities: torch.Tensor
    note: str = "x"


def test_slice_and_concat_round_trip() -> None:
    inf = FakeInference(torch.arange(10.0).reshape(5, 2), torch.arange(5.0))
    parts = [slice_inference(inf, 0, 2), slice_inference(inf, 2, 5)]
    joined = concat_inferences(parts)
    assert torch.equal(joined.logits, inf.logits) and joined.note == "x"


def test_batcher_batches_across_images_and_keeps_tile_order() -> None:
    sizes: list[int] = []
    done: dict[str, FakeInference] = {}

    def infer(batch: torch.Tensor) -> FakeInference:
        sizes.append(int(batch.shape[0]))
        ids = batch[:, 0, 0, 0]
        return FakeInference(torch.stack([ids, -ids], 1), ids.clone())

    def on_done(work, inference, exc) -> None:
        assert exc is None
        done[work] = inference

    clock = FakeClock()  # standing still: only a full batch goes until the test moves it
    batcher = TileBatcher(infer, on_done, max_batch_tiles=4, max_batch_wait_ms=200, clock=clock)
    with batcher:
        for name, count, base in (("a", 3, 0), ("b", 3, 10), ("c", 1, 20)):
            tiles = torch.zeros(count, 3, 2, 2)
            tiles[:, 0, 0, 0] = torch.arange(count) + base
            batcher.submit(name, tiles)
        clock.now += 0.2  # the rest has waited max_batch_wait_ms
        deadline = time.monotonic() + 5
        while len(done) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(done) == ["a", "b", "c"]
    assert done["b"].probabilities.tolist() == [10, 11, 12]
    assert sum(sizes) == 7 and max(sizes) <= 4 and sizes[0] == 4  # a's 3 + one of b's


def test_batcher_does_not_wait_longer_than_max_batch_wait() -> None:
    done: list[float] = []

    def infer(batch):
        return FakeInference(torch.zeros(batch.shape[0], 2), torch.zeros(batch.shape[0]))

    clock = FakeClock()
    batcher = TileBatcher(infer, lambda w, i, e: done.append(clock()),
                          max_batch_tiles=64, max_batch_wait_ms=50, clock=clock)
    with batcher:
        start = clock()
        batcher.submit("a", torch.zeros(1, 3, 2, 2))
        assert not _wait(lambda: bool(done), 0.3)  # 0 of 50 ms waited: it waits for company
        clock.now += 0.05
        assert _wait(lambda: bool(done), 5)
    assert done and done[0] - start == pytest.approx(0.05)


def test_batcher_reports_backend_failure_for_every_member() -> None:
    results: list[tuple[str, object]] = []

    def infer(batch):
        raise RuntimeError("device lost")

    batcher = TileBatcher(infer, lambda w, i, e: results.append((w, e)),
                          max_batch_tiles=8, max_batch_wait_ms=10)
    with batcher:
        batcher.submit("a", torch.zeros(2, 3, 2, 2))
        batcher.submit("b", torch.zeros(2, 3, 2, 2))
        deadline = time.monotonic() + 5
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(w for w, _ in results) == ["a", "b"]
    assert all(isinstance(e, RuntimeError) for _, e in results)
