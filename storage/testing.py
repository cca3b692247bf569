"""Helpers for tests that need a real database (storage's own and the daemon's).

``database_url(kind, tmp_path)`` gives a fresh, isolated database: an SQLite file in
``tmp_path``, or a new PostgreSQL schema on the server named by
``MARGINWATCH_TEST_PG_URL`` (dropped again on exit), so tests are repeatable and can
run side by side. ``sample_record`` builds an :class:`AssessmentRecord` without the engine.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .records import AssessmentRecord, TileRecord

__all__ = [
    "PG_URL_ENV",
    "backend_params",
    "database_url",
    "pg_schema_url",
    "sample_heatmap_png",
    "sample_record",
]

PG_URL_ENV = "MARGINWATCH_TEST_PG_URL"


@contextmanager
def pg_schema_url(base_url: str) -> Iterator[str]:
    """A URL whose connections use a brand-new schema (search_path); dropped afterwards."""
    schema = f"mwtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """``kind`` "sqlite" -> a file path in ``tmp_path``; "postgresql" -> a fresh schema URL."""
    if kind == "sqlite":
        yield str(tmp_path / "marginwatch.db")
        return
    base = os.environ.get(PG_URL_ENV)
    if not base:
        raise RuntimeError(f"{PG_URL_ENV} is not set")
    with pg_schema_url(base) as url:
        yield url


def sample_heatmap_png(side: int = 8) -> bytes:
    """A small 16-bit grey PNG (a diagonal ramp)."""
    import numpy as np
    from PIL import Image

    ramp = (np.add.outer(np.arange(side), np.arange(side)) * (65535 // (2 * side))).astype(
        np.uint16
    )
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_record(
    model_id: int,
    *,
    decision: bool = False,
    probability: float | None = None,
    sha256: str | None = None,
    tiles: int = 3,
) -> AssessmentRecord:
    p = probability if probability is not None else (0.91 if decision else 0.07)
    return AssessmentRecord(
        model_id=model_id,
        sha256=sha256 or uuid.uuid4().hex * 2,
        shape=(256, 256, 3),
        um_per_px=1.2,
        um_per_px_source="profile-default",
        profile="grey",
        backend="torch-cpu",
        device="cpu",
        precision="fp32",
        raw_probability=min(1.0, p + 0.02),
        probability=p,
        decision=decision,
        threshold=0.5,
        timings={"read": 0.01, "preprocess": 0.02, "infer": 0.1, "cam": 0.01, "aggregate": 0.0},
        tiles=tuple(
            TileRecord((64 * i, 0, 64 * i + 64, 64), p if i == 0 else p / 2) for i in range(tiles)
        ),
        driving_tile=0,
        heatmap_png=sample_heatmap_png(),
        heatmap_scale=32.0,
    )


def backend_params() -> list:
    """pytest params: SQLite always, PostgreSQL when MARGINWATCH_TEST_PG_URL is set."""
    import pytest

    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param(
            "postgresql",
            id="postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"{PG_URL_ENV} not set"),
            ],
        ),
    ]
