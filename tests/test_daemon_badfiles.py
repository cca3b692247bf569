"""End-to-end: bad files among good ones each end failed (with a reason) or ignored.

The unreadable file: tests run as root here, and root reads a mode-000 file anyway. So
when the suite runs as root the daemon process is started as ``nobody`` (``setpriv``),
with its state in a folder ``nobody`` owns, and the unreadable file is a root-owned
mode-000 file: the daemon meets a real EACCES. Not as root, the file
is simply ours with mode 000. When ``nobody`` cannot run this checkout's
``marginwatch`` at all (a clone under a 0700 folder, such as a home or ``mktemp -d``),
the test skips and says so.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import MARGINWATCH, Daemon, all_final, query, wait_for, write_image

NOBODY = 65534


AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def why_nobody_cannot_run(marginwatch: str = MARGINWATCH) -> str | None:
    """Why ``nobody`` cannot start ``marginwatch`` (None when it can)."""
    try:
        probe = subprocess.run([*AS_NOBODY, marginwatch, "--version"], capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"cannot run setpriv: {exc}"
    if probe.returncode == 0:
        return None
    said = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
    return (f"as root the daemon runs as nobody, who cannot run {marginwatch} ({said}): "
            "a folder above this checkout is not open to other users (a 0700 home or "
            "mktemp -d clone)")


def _huge_tiff(path: Path, width: int = 200_000, height: int = 200_000) -> None:
    """A little-endian TIFF whose one IFD declares width x height 8-bit grey pixels."""
    entries = [
        (256, 4, 1, width),  # ImageWidth LONG
        (257, 4, 1, height),  # ImageLength LONG
        (258, 3, 1, 8),  # BitsPerSample SHORT
        (259, 3, 1, 1),  # Compression none
        (262, 3, 1, 1),  # Photometric minisblack
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 0xFFFFFFFF),  # StripByteCounts (a lie)
    ]
    ifd_offset = 16
    body = b"II*\x00" + struct.pack("<I", ifd_offset) + b"\x00" * 8
    body += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, typ, count) + packed
    body += struct.pack("<I", 0)
    path.write_bytes(body)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside pytest's private (0700) tmp tree, traversable by ``nobody``."""
    base = Path(tempfile.mkdtemp(prefix="mw-daemon-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_bad_files_fail_or_are_ignored_with_reasons(shared_dir: Path, tiny_model_dir) -> None:
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    if root and (why := why_nobody_cannot_run()) is not None:
        pytest.skip(why)
    watch = shared_dir / "export" / "case1"
    watch.mkdir(parents=True)
    work = shared_dir / "state"
    work.mkdir()
    model = shared_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    for p in (shared_dir, model, *model.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    if root:
        os.chown(work, NOBODY, NOBODY)

    good = [f"good{i}.tif" for i in range(3)]
    for i, name in enumerate(good):
        write_image(watch / name, seed=500 + i)
    (watch / "zero.tif").write_bytes(b"")
    (watch / "random.tif").write_bytes(os.urandom(5000))
    whole = (watch / "good0.tif").read_bytes()
    (watch / "truncated.tif").write_bytes(whole[: len(whole) // 3])
    _huge_tiff(watch / "huge.tif")
    (watch / "passwd.tif").symlink_to("/etc/passwd")
    (watch / "x.tif").mkdir()
    write_image(watch / "unreadable.tif", seed=900)
    os.chmod(watch / "unreadable.tif", 0o000)
    for p in watch.iterdir():
        if p.is_file() and not p.is_symlink() and p.name != "unreadable.tif":
            os.chmod(p, 0o644)
    os.chmod(watch, 0o755)
    os.chmod(watch.parent, 0o755)

    daemon = Daemon(work, watch.parent, model,
                    daemon={"max_attempts": 2, "retry_delay_seconds": 0.2},
                    prefix=AS_NOBODY if root else None)
    bad = ["zero.tif", "random.tif", "truncated.tif", "huge.tif", "passwd.tif", "unreadable.tif"]
    expected = {f"case1/{n}" for n in good + bad}
    with daemon:
        daemon.start(extra_env={"HOME": str(work)}).wait_ready()
        final = wait_for(daemon.db, all_final(expected), 120, daemon)
        assert daemon.alive()  # still running after all that
        write_image(watch / "after.tif", seed=777)  # and still assessing
        os.chmod(watch / "after.tif", 0o644)
        wait_for(daemon.db, all_final({"case1/after.tif"}), 60, daemon)
        assert daemon.stop() == 0

    assert "case1/x.tif" not in final  # a directory is never a candidate
    for name in good:
        assert final[f"case1/{name}"][-1][0] == "done", (name, final)
    errors = {}
    for name in bad:
        state, _attempts, error_class = final[f"case1/{name}"][-1]
        assert state == "failed", (name, final[f"case1/{name}"])
        errors[name] = error_class
    assert errors["passwd.tif"] == "RefusedFileError"
    assert errors["huge.tif"] == "ImageTooLargeError"
    # the engine translates EACCES at its boundary into UnreadableImageError
    assert errors["unreadable.tif"] in ("PermissionError", "UnreadableImageError")
    assert errors["zero.tif"] in ("UnreadableImageError", "InputError")
    rows = query(daemon.db, "SELECT i.rel_path, j.error_message, a.kind FROM jobs j "
                 "JOIN images i ON i.id = j.image_id JOIN alerts a ON a.job_id = j.id "
                 "WHERE j.state = 'failed'")
    assert {r[0] for r in rows} == {f"case1/{n}" for n in bad}  # every one has an alert
    for rel, message, kind in rows:
        assert kind == "not-assessed"
        assert message and ";" in message, (rel, message)  # what happened; what to do
        assert str(shared_dir) not in message  # the message names the relative path only
        if rel.endswith("unreadable.tif"):
            assert "ermission" in message, message
            assert "read access" in message and "re-export" not in message, message
    log = daemon.log()
    assert "passwd" not in log and "unreadable" not in log
