"""The TensorRT engine cache WITHOUT TensorRT: keys, paths, hit/miss, atomic writes.

TensorRT itself is not exercised here (it cannot be installed on this test machine):
the build is a parameter of :func:`ensure_plan` / :func:`prepare_engine` (the seam the
backend uses), and these tests pass a build function that returns plain bytes. What is
tested is everything around TensorRT: which file a plan goes to, when a cached plan is
used or rebuilt, what is written and how, and how build failures surface.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from marginwatch.engine import load_model
from marginwatch.engine._engine_cache import (
    BuildOutput,
    EngineCache,
    EngineKey,
    MessageLog,
    atomic_write,
    default_cache_dir,
    ensure_plan,
)
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import BackendError, EngineBuildError
from marginwatch.engine.tensorrt_backend import engine_key, prepare_engine

KEY = EngineKey(
    model_digest="ab" * 32,
    tensorrt_version="10.3.0",
    gpu_name="NVIDIA RTX A4000",
    compute_capability="8.6",
    precision="fp16",
    max_batch=32,
    input_size_px=896,
)
TARGET = ("10.3.0", "NVIDIA RTX A4000", "8.6")


class BytesBuild:
    """Injected build (not TensorRT): returns fixed plan bytes and records its calls."""

    def __init__(self, plan: bytes = b"PLAN-1", timing: bytes | None = b"TIMING-1") -> None:
        self.plan, self.timing = plan, timing
        self.calls: list[bytes | None] = []

    def __call__(self, timing_cache: bytes | None) -> BuildOutput:
        self.calls.append(timing_cache)
        return BuildOutput(self.plan, self.timing)


# --- keys and paths ---------------------------------------------------------------------


def test_key_digest_and_paths_are_stable() -> None:
    same = EngineKey(**dataclasses.asdict(KEY))
    assert same.digest() == KEY.digest() and len(KEY.digest()) == 64
    cache = EngineCache("/cache")
    assert cache.plan_path(KEY) == Path(f"/cache/{'ab' * 8}-fp16-b32-{KEY.digest()[:16]}.plan")
    assert cache.metadata_path(KEY).with_suffix(".plan") == cache.plan_path(KEY)
    timing = "timing-trt10.3.0-nvidia-rtx-a4000-sm8.6.cache"
    assert cache.timing_cache_path(KEY) == Path("/cache") / timing


@pytest.mark.parametrize("field, value", [
    ("model_digest", "cd" * 32),
    ("tensorrt_version", "10.4.0"),
    ("gpu_name", "NVIDIA H100 80GB HBM3"),
    ("compute_capability", "9.0"),
    ("precision", "fp32"),
    ("max_batch", 16),
    ("input_size_px", 448),
])
def test_every_key_part_changes_the_plan_file(field: str, value: object) -> None:
    other = dataclasses.replace(KEY, **{field: value})
    cache = EngineCache("/cache")
    assert other.digest() != KEY.digest()
    assert cache.plan_path(other) != cache.plan_path(KEY)
    # the timing cache is per TensorRT version and GPU, shared by models and precisions
    shared = field in ("model_digest", "precision", "max_batch", "input_size_px")
    assert (cache.timing_cache_path(other) == cache.timing_cache_path(KEY)) is shared


def test_default_cache_dir_prefers_systemd_then_xdg_then_home(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    assert default_cache_dir({"CACHE_DIRECTORY": "/var/cache/marginwatch"}) == Path(
        "/var/cache/marginwatch/engines")
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "marginwatch/engines"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir({}) == tmp_path / ".cache/marginwatch/engines"


def test_engine_key_from_model_and_bad_settings(tiny_model_dir) -> None:  # noqa: ANN001
    model = load_model(tiny_model_dir)
    key = engine_key(model, precision="fp32", max_batch=4, tensorrt_version="10.3.0",
                     gpu_name="g", compute_capability="8.9")
    assert key.model_digest == model.digest and key.input_size_px == model.card.input_size_px
    with pytest.raises(BackendError, match="precision .int8."):
        engine_key(model, precision="int8", max_batch=4, tensorrt_version="10", gpu_name="g",
                   compute_capability="8.9")


# --- hit and miss (injected build, not TensorRT) ----------------------------------------


def test_miss_builds_and_caches_then_hit_loads_without_building(tmp_path, caplog) -> None:  # noqa: ANN001
    cache, build = EngineCache(tmp_path), BytesBuild()
    ticks = iter([100.0, 142.5])
    with caplog.at_level(logging.INFO, logger="marginwatch.engine._engine_cache"):
        first = ensure_plan(KEY, cache, build, clock=lambda: next(ticks))
    assert first.built and first.plan == b"PLAN-1" and first.build_seconds == pytest.approx(42.5)
    assert build.calls == [None]  # no timing cache yet
    assert cache.plan_path(KEY).read_bytes() == b"PLAN-1"
    assert cache.timing_cache_path(KEY).read_bytes() == b"TIMING-1"
    meta = json.loads(cache.metadata_path(KEY).read_text())
    assert meta["key"]["gpu_name"] == KEY.gpu_name and meta["build_seconds"] == 42.5
    assert "built TensorRT engine" in caplog.text and "42.5 s" in caplog.text

    second = ensure_plan(KEY, cache, build)
    assert not second.built and second.plan == b"PLAN-1" and second.path == cache.plan_path(KEY)
    assert len(build.calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temps


def test_rebuild_reuses_the_timing_cache(tmp_path) -> None:  # noqa: ANN001
    cache = EngineCache(tmp_path)
    ensure_plan(KEY, cache, BytesBuild())
    again = BytesBuild(plan=b"PLAN-2", timing=b"TIMING-2")
    result = ensure_plan(KEY, cache, again, rebuild=True)
    assert again.calls == [b"TIMING-1"] and result.built
    assert cache.load(KEY) == b"PLAN-2"
    assert cache.timing_cache_path(KEY).read_bytes() == b"TIMING-2"


def test_another_key_is_a_miss(tmp_path) -> None:  # noqa: ANN001
    cache = EngineCache(tmp_path)
    ensure_plan(KEY, cache, BytesBuild())
    build = BytesBuild(plan=b"FP32")
    other = dataclasses.replace(KEY, precision="fp32")
    assert ensure_plan(other, cache, build).built and build.calls == [b"TIMING-1"]
    assert cache.load(KEY) == b"PLAN-1" and cache.load(other) == b"FP32"


@pytest.mark.parametrize("damage", ["plan-bytes", "metadata-key", "metadata-missing",
                                    "metadata-garbage"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, damage: str) -> None:  # noqa: ANN001
    cache = EngineCache(tmp_path)
    ensure_plan(KEY, cache, BytesBuild())
    meta_path = cache.metadata_path(KEY)
    if damage == "plan-bytes":
        cache.plan_path(KEY).write_bytes(b"PLAN-")  # truncated
    elif damage == "metadata-key":
        meta = json.loads(meta_path.read_text())
        meta["key"]["gpu_name"] = "another GPU"
        meta_path.write_text(json.dumps(meta))
    elif damage == "metadata-missing":
        meta_path.unlink()
    else:
        meta_path.write_text("{not json")
    assert cache.load(KEY) is None
    build = BytesBuild(plan=b"PLAN-NEW")
    assert ensure_plan(KEY, cache, build).built and cache.load(KEY) == b"PLAN-NEW"


def test_build_failure_raises_engine_build_error_with_log_and_caches_nothing(tmp_path) -> None:  # noqa: ANN001
    log = MessageLog()
    log.add("ERROR", "[network.cpp::validate] Error Code 4: unsupported layer")

    def failing(_timing: bytes | None) -> BuildOutput:
        raise EngineBuildError("TensorRT could not build the engine", log=log.text())

    with pytest.raises(EngineBuildError) as info:
        ensure_plan(KEY, EngineCache(tmp_path), failing)
    assert "Error Code 4" in info.value.log and "--- TensorRT log ---" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_other_build_exceptions_are_translated(tmp_path) -> None:  # noqa: ANN001
    def crashing(_timing: bytes | None) -> BuildOutput:
        raise RuntimeError("CUDA initialization failure with error 35")

    with pytest.raises(EngineBuildError, match="error 35") as info:
        ensure_plan(KEY, EngineCache(tmp_path), crashing)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(EngineBuildError, match="empty plan"):
        ensure_plan(KEY, EngineCache(tmp_path), BytesBuild(plan=b""))


def test_unwritable_cache_still_returns_the_plan(tmp_path, caplog) -> None:  # noqa: ANN001
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # a file where the cache folder should be (fails for root too)
    with caplog.at_level(logging.WARNING):
        result = ensure_plan(KEY, EngineCache(blocker / "engines"), BytesBuild())
    assert result.built and result.plan == b"PLAN-1" and result.path is None
    assert "cannot write the TensorRT engine cache" in caplog.text


def test_atomic_write_replaces_whole_files(tmp_path) -> None:  # noqa: ANN001
    target = tmp_path / "sub" / "f.plan"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.plan"]


def test_message_log_keeps_the_last_lines() -> None:
    log = MessageLog(limit=3)
    for i in range(5):
        log.add("WARNING", f"line {i}\n")
    assert log.lines == ["[WARNING] line 2", "[WARNING] line 3", "[WARNING] line 4"]


# --- prepare_engine: config -> key -> cache (injected build and target, not TensorRT) -----


def test_prepare_engine_reads_settings_from_config(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    model = load_model(tiny_model_dir)
    config = EngineConfig(precision="fp32", tensorrt_max_batch=4, engine_cache_dir=tmp_path)
    build = BytesBuild()
    first = prepare_engine(model, config, build=build, target=TARGET)
    assert first.built and first.path is not None and first.path.parent == tmp_path
    assert (first.key.precision, first.key.max_batch) == ("fp32", 4)
    assert first.key.model_digest == model.digest
    assert not prepare_engine(model, config, build=build, target=TARGET).built  # daemon restart
    # the export command's overrides give a different engine
    fp16 = prepare_engine(model, config, precision="fp16", max_batch=8, build=build, target=TARGET)
    assert fp16.built and fp16.path != first.path and len(build.calls) == 2
    with pytest.raises(ValueError, match="both build and target"):
        prepare_engine(model, config, build=build)
