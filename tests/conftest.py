"""Shared fixtures: offline, deterministic, no leaked threads."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest
from marginwatch.storage.testing import backend_params, database_url

PG_URL_ENV = "MARGINWATCH_TEST_PG_URL"


def pytest_report_header(config: pytest.Config) -> list[str]:
    if os.environ.get(PG_URL_ENV):
        return [f"PostgreSQL tests: enabled ({PG_URL_ENV} is set)"]
    return [f"PostgreSQL tests: SKIPPED ({PG_URL_ENV} is not set)"]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not os.environ.get(PG_URL_ENV):
        terminalreporter.write_line(
            f"note: PostgreSQL tests were skipped: {PG_URL_ENV} is not set "
            "(.ci/run sets it when a server answers on 127.0.0.1:5432)"
        )


@pytest.fixture(autouse=True)
def _seeded_rng():
    """Seed Python's and numpy's global RNGs, and restore them afterwards."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    random.seed(1234)
    np.random.seed(1234)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    torch_state = torch.random.get_rng_state() if torch is not None else None
    if torch is not None:
        torch.manual_seed(1234)
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    if torch is not None and torch_state is not None:
        torch.random.set_rng_state(torch_state)


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    """Fail a test that leaves a non-daemon-pool thread running (watchdog's habit)."""
    before = set(threading.enumerate())
    yield
    deadline = 5.0
    leaked = []
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=deadline)
        deadline = 0.5
        if thread.is_alive() and not thread.name.startswith(("pydevd", "ThreadPoolExecutor")):
            leaked.append(thread.name)
    assert not leaked, f"test leaked running threads: {leaked}"


# --- storage fixtures (owner: storage) -----------------------------------------------
# One home for the database fixtures every storage suite uses: a module that needs other
# options defines its own fixture of the same name, which overrides these.


@pytest.fixture(params=backend_params())
def db_url(request, tmp_path):  # noqa: ANN001, ANN201
    """An SQLite file in ``tmp_path``, and a fresh PostgreSQL schema when
    ``MARGINWATCH_TEST_PG_URL`` is set (the test runs once per backend)."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url):  # noqa: ANN001, ANN201
    """A migrated :class:`Store` on ``db_url``, closed after the test."""
    from marginwatch.storage import Store

    with Store.open(db_url, upgrade=True) as opened:
        yield opened


@pytest.fixture(params=backend_params())
def daemon_db(request, tmp_path):  # noqa: ANN001, ANN201
    """A daemon test's database: None (an SQLite file in the daemon's state folder), or,
    when ``MARGINWATCH_TEST_PG_URL`` is set, the URL of a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    with database_url("postgresql", tmp_path) as url:
        yield url


# --- engine fixtures (owner: engine) ------------------------------------------------
# Reusable by every suite: a tiny random model artefact and small synthetic FCM TIFFs.

TINY_INPUT_PX = 64
TINY_UM_PER_PX = 1.0


def make_tiny_model(folder, arch: str = "resnet18", *, seed: int = 0, **card):  # noqa: ANN001, ANN201
    """Build a random ``arch`` model (input 64 px, 1.0 um/px unless ``card`` says) and save it."""
    import torch
    from marginwatch.engine import build_model

    options = {"input_size_px": TINY_INPUT_PX, "um_per_px": TINY_UM_PER_PX, **card}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(arch, **options)
    model.save(folder)
    return folder


def write_fcm_tiff(path, *, shape=(192, 256), channels: int = 1, dtype="uint16",  # noqa: ANN001, ANN201
                   um_per_px: float | None = 1.0, seed: int = 0, tissue: bool = True, **kwargs):
    """Write an FCM-like TIFF: dark glass, a bright tissue ellipse with nuclei; (H, W[, C]).

    ``um_per_px`` goes into the resolution tags (centimetre unit); ``kwargs`` go to
    ``tifffile.imwrite`` (tile=, compression=, planarconfig=, bigtiff=, ...).
    """
    import tifffile

    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    ry, rx = height * 0.38, width * 0.38
    inside = ((yy - height / 2) / ry) ** 2 + ((xx - width / 2) / rx) ** 2 < 1
    signal = rng.normal(0.03, 0.01, shape)
    if tissue:
        signal += inside * (0.35 + 0.1 * rng.random(shape))
        for _ in range(max(4, height * width // 400)):
            cy, cx = rng.integers(0, height), rng.integers(0, width)
            if inside[cy, cx]:
                signal[max(0, cy - 2) : cy + 3, max(0, cx - 2) : cx + 3] += 0.5
    signal = np.clip(signal, 0.0, 1.0)
    planes = [signal] + [np.clip(signal * (0.5 + 0.1 * c), 0, 1) for c in range(1, channels)]
    data = np.stack(planes, axis=-1) if channels > 1 else signal
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        data = (data * np.iinfo(dt).max).astype(dt)
    else:
        data = data.astype(dt)
    if um_per_px is not None:
        kwargs.setdefault("resolution", (1e4 / um_per_px, 1e4 / um_per_px))
        kwargs.setdefault("resolutionunit", "CENTIMETER")
    if channels > 1 and kwargs.get("planarconfig") == "separate":
        data = np.moveaxis(data, -1, 0)  # (H, W, C) -> (C, H, W) for planar storage
    if channels > 1:
        kwargs.setdefault("photometric", "rgb" if channels == 3 else "minisblack")
        kwargs.setdefault("planarconfig", "contig")
    tifffile.imwrite(path, data, **kwargs)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):  # noqa: ANN001, ANN201
    """A saved tiny random resnet18 (grey profile, input 64 px, 1.0 um/px); do not modify it."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def fcm_tiff(tmp_path):  # noqa: ANN001, ANN201
    """Factory: ``fcm_tiff(name="image.tif", **write_fcm_tiff options) -> Path``."""

    def make(name: str = "image.tif", **options):  # noqa: ANN202
        return write_fcm_tiff(tmp_path / name, **options)

    return make
