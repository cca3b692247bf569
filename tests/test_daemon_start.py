"""The daemon's start-up steps: orphaned jobs, systemd start time for TensorRT, restart fields.

Real pieces: a real SQLite store, the tiny model on disk, a real notify datagram socket.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from marginwatch.daemon._stages import TENSORRT_START_EXTEND_SECONDS, load_stages
from marginwatch.daemon.sdnotify import Notifier
from marginwatch.daemon.service import RESTART_ENGINE_FIELDS, _owner, _owner_alive
from marginwatch.engine.config import Config, DaemonConfig, EngineConfig
from marginwatch.engine.errors import BackendError
from marginwatch.storage import Store


def test_restart_engine_fields_are_engine_settings() -> None:
    fields = set(EngineConfig.model_fields)
    assert set(RESTART_ENGINE_FIELDS) <= fields
    assert {"tensorrt_max_batch", "tensorrt_workspace_mib"} <= set(RESTART_ENGINE_FIELDS)


def test_owner_alive_reads_the_pid_of_an_owner_string() -> None:
    me = _owner()
    assert me.endswith(f":{os.getpid()}")
    assert _owner_alive(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now (unless reused at once)
    gone = me.rpartition(":")[0] + f":{child.pid}"
    assert not _owner_alive(gone)
    assert _owner_alive("someone@else:not-a-pid")  # unknown form: leave it to the lease


@pytest.fixture
def notify(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    try:
        with Notifier(str(tmp_path / "notify")) as notifier:
            yield notifier, sock
    finally:
        sock.close()


def _received(sock: socket.socket) -> list[str]:
    lines = []
    while True:
        try:
            lines += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            return lines


def _config(model_dir: Path, tmp_path: Path, backend: str) -> Config:
    return Config(
        daemon=DaemonConfig(model_dir=model_dir, state_dir=tmp_path),
        engine=EngineConfig(backend=backend, precision="fp32"),
    )


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT present: selecting it would build an engine here")
def test_tensorrt_start_asks_systemd_for_more_time_first(notify, tmp_path, tiny_model_dir):
    notifier, sock = notify
    config = _config(Path(tiny_model_dir), tmp_path, "tensorrt")
    with Store.open(tmp_path / "m.db", upgrade=True) as store:
        with pytest.raises(BackendError):  # no TensorRT on this machine
            load_stages(config, store, actor="test", notifier=notifier)
    usec = int(TENSORRT_START_EXTEND_SECONDS * 1_000_000)
    assert f"EXTEND_TIMEOUT_USEC={usec}" in _received(sock)  # sent before the selection


def test_torch_backend_start_does_not_extend(notify, tmp_path, tiny_model_dir):
    notifier, sock = notify
    config = _config(Path(tiny_model_dir), tmp_path, "torch-cpu")
    with Store.open(tmp_path / "m.db", upgrade=True) as store:
        _, _, _, described = load_stages(config, store, actor="test", notifier=notifier)
    assert described["backend"] == "torch-cpu"
    assert not any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in _received(sock))
