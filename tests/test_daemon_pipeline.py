"""The typed pipeline on real parts: a SQLite store, the tiny model's engine stages, TIFFs.

Two copies of the same bytes in flight at once end as one assessment and one duplicate,
with one duplicate lookup per image (the finisher does not ask the database again), and
the heatmap reaches the store as PNG bytes encoded before the finishing transaction.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from daemon_support import write_image
from marginwatch.daemon._stages import load_stages
from marginwatch.daemon.pipeline import Pipeline, Settings
from marginwatch.engine.config import load_config
from marginwatch.storage import Store


class CountingStore:
    """The real store, counting duplicate lookups and seeing the record it is given."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.lookups = 0
        self.both_looked_up = threading.Event()
        self.records: list[object] = []

    def find_assessment(self, sha256: str, model_id: int) -> int | None:
        found = self._store.find_assessment(sha256, model_id)
        self.lookups += 1
        if self.lookups >= 2:
            self.both_looked_up.set()
        return found

    def finish_job(self, job_id, owner, result):  # noqa: ANN001, ANN201
        self.records.append(result)
        return self._store.finish_job(job_id, owner, result)

    def mark_duplicate(self, job_id, owner, sha256, of_prediction_id):  # noqa: ANN001, ANN201
        return self._store.mark_duplicate(job_id, owner, sha256, of_prediction_id)

    def fail_job(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self._store.fail_job(*args, **kwargs)


def _wait(predicate, seconds: float = 60.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_copies_in_flight_end_as_one_assessment_one_duplicate_one_lookup_each(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    copies = 2
    root = tmp_path / "export"
    write_image(root / "case" / "a.tif", seed=3)
    for i in range(1, copies):
        shutil.copyfile(root / "case" / "a.tif", root / "case" / f"a{i}.tif")
    config = load_config(None, environ={}, overrides={"daemon": {"model_dir": tiny_model_dir}})
    with Store.open(tmp_path / "mw.db", upgrade=True) as store:
        stages, infer, model_id, _ = load_stages(config, store, actor="test")
        counting = CountingStore(store)

        def gated_infer(batch):  # noqa: ANN001, ANN202
            # no inference until both readers looked for an earlier assessment
            assert counting.both_looked_up.wait(30)
            return infer(batch)

        names = ["case/a.tif", *(f"case/a{i}.tif" for i in range(1, copies))]
        for name in names:
            st = (root / name).stat()
            store.record_discovery(str(root), name, st.st_size, st.st_mtime_ns, "test")
        pipeline = Pipeline(store=counting, engine=stages, infer=gated_infer, model_id=model_id,
                            root=str(root), owner="w", settings=Settings(3, 0.1), workers=2,
                            max_batch_tiles=8, max_batch_wait_ms=0)
        with pipeline:
            for _ in names:
                pipeline.submit(store.claim_job("w", 60))
            assert _wait(lambda: pipeline.in_flight() == 0)
        rows = {r.rel_path: r for r in store.list_images()}
        states = sorted(r.state for r in rows.values())
        assert states == ["done", *(["duplicate"] * (copies - 1))]
        assert len({r.prediction_id for r in rows.values()}) == 1  # linked, not rerun
        assert counting.lookups == copies  # once per image, none in the finisher
        (record,) = counting.records
        assert record.heatmap_png is not None and record.heatmap_png.startswith(b"\x89PNG")
        assert dict(pipeline.counts) == {"assessed": 1, "duplicate": copies - 1}
