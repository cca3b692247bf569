"""Shared fixtures: offline, deterministic, no leaked threads."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest

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
