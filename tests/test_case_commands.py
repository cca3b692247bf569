"""``marginwatch case list|show|close|report``: the real CLI in a subprocess, real files.

The report is parsed as HTML (the standard library's parser), every embedded picture
is decoded with Pillow, and nothing in it points at a network.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tifffile
from marginwatch.storage import Placement, Store
from marginwatch.storage.testing import sample_record
from PIL import Image

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
OWNER = "marginwatch-daemon@theatre:4242"
FOLDER = "Smith-J-1961"


def _cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARGINWATCH_")}
    if config is not None:
        env["MARGINWATCH_CONFIG"] = str(config)
    return subprocess.run([MARGINWATCH, "case", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def case_db(tmp_path: Path) -> Path:
    """A case with a tumour (acknowledged), a clear, a failed and a pending image."""
    export = tmp_path / "export"
    (export / FOLDER).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("LPL_1.tif", "APEX_1.tif", "RPL_1.tif", "BASE_1.tif"):
        tifffile.imwrite(export / FOLDER / name,
                         rng.integers(0, 4000, (256, 256), dtype=np.uint16))
    root = os.path.realpath(export)
    db = tmp_path / "m.db"
    with Store.open(db, upgrade=True) as store:
        model = store.register_model("c0ffee" * 10 + "abcd", "resnet18", {"synthetic_demo": True})
        plan = [("LPL_1.tif", "left-posterolateral", True), ("APEX_1.tif", "apex", False),
                ("RPL_1.tif", "right-posterolateral", "fail"), ("BASE_1.tif", "base", None)]
        for i, (name, location, outcome) in enumerate(plan):
            store.record_discovery(root, f"{FOLDER}/{name}", 100 + i, 1, OWNER,
                                   placement=Placement(FOLDER, location, "filename"))
            if outcome is None:
                continue
            job = store.claim_job(OWNER, 60)
            if outcome == "fail":
                store.fail_job(job.job_id, OWNER, "UnreadableImageError",
                               f"{FOLDER}/{name}: truncated; re-export the image", None, 1)
            else:
                store.finish_job(job.job_id, OWNER, sample_record(model, decision=outcome))
        tumour = next(a for a in store.open_alerts() if a.kind == "tumour-at-margin")
        store.acknowledge(tumour.id, "Dr Gray", "told the surgeon")
    return db


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_list_and_show(case_db: Path) -> None:
    before = _digest(case_db)
    done = _cli("list", "--db", str(case_db))
    assert done.returncode == 0, done.stderr
    assert FOLDER in done.stdout and "tumour at margin" in done.stdout
    listed = json.loads(_cli("list", "--db", str(case_db), "--json").stdout)
    (case,) = listed["cases"]
    assert case["status"] == "tumour" and case["state"] == "open"
    assert case["counts"] == {"tumour": 1, "not-assessable": 1, "pending": 1, "clear": 1}
    assert json.loads(_cli("list", "--db", str(case_db), "--open", "--json").stdout)["cases"]
    assert json.loads(_cli("list", "--db", str(case_db), "--since", "2100-01-01",
                           "--json").stdout)["cases"] == []
    shown = _cli("show", FOLDER, "--db", str(case_db))
    assert shown.returncode == 0, shown.stderr
    assert "left-posterolateral" in shown.stdout and "not assessable" in shown.stdout
    assert "case.opened" in shown.stdout
    body = json.loads(_cli("show", case["case_id"][:8], "--db", str(case_db), "--json").stdout)
    states = {loc["location"]: loc["state"] for loc in body["locations"]}
    assert states == {"left-posterolateral": "tumour", "apex": "clear",
                      "right-posterolateral": "not-assessable", "base": "pending"}
    assert _digest(case_db) == before  # reading commands changed nothing


@pytest.mark.parametrize("command", ["show", "report", "close"])
def test_unknown_case_is_one_line_and_exit_2(case_db: Path, tmp_path: Path, command) -> None:
    extra = {"show": [], "report": ["--out", str(tmp_path / "r")], "close": ["--by", "x"]}
    done = _cli(command, "no-such-case", "--db", str(case_db), *extra[command])
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no such case" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_close_is_audited_and_refused_twice(case_db: Path) -> None:
    done = _cli("close", FOLDER, "--by", "Dr Gray", "--note", "all faces scanned",
                "--db", str(case_db))
    assert done.returncode == 0, done.stderr
    assert "closed by Dr Gray" in done.stdout
    again = _cli("close", FOLDER, "--by", "Dr Gray", "--db", str(case_db))
    assert again.returncode == 2 and "already closed" in again.stderr
    with Store.open(case_db, readonly=True) as store:
        events = store.case_detail(FOLDER).events
        assert [(e.action, e.actor) for e in events][-1] == ("case.closed", "Dr Gray")
        assert events[-1].payload["note"] == "all faces scanned"
        assert store.verify_audit().ok
    assert _cli("list", "--open", "--json", "--db", str(case_db)).stdout.count("case_id") == 0


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "src" and tag == "img":
                self.images.append(value or "")
            elif name in ("href", "src"):
                self.links.append(value or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _report(case_db: Path, out: Path, config: Path | None = None, *extra: str
            ) -> tuple[Path, _Parsed]:
    done = _cli("report", FOLDER, "--out", str(out), "--db", str(case_db), *extra,
                config=config)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.html")
    assert str(path) in done.stdout
    parsed = _Parsed()
    parsed.feed(path.read_text(encoding="utf-8"))
    parsed.close()
    return path, parsed


def test_report_is_self_contained_html(case_db: Path, tmp_path: Path) -> None:
    before = _digest(case_db)
    path, parsed = _report(case_db, tmp_path / "out")
    text = " ".join(parsed.text)
    assert parsed.tags[0] == "html" and "svg" in parsed.tags
    assert "RESEARCH USE ONLY" in text and "SYNTHETIC DEMO MODEL" in text
    assert f"Case {FOLDER}" in text
    for location in ("left-posterolateral", "apex", "right-posterolateral", "base"):
        assert location in text
    assert "tumour at margin" in text and "not assessable" in text and "pending" in text
    assert "0.910" in text and "threshold 0.500" in text  # probability and threshold
    assert "c0ffee" * 10 + "abcd" in text  # the model digest
    assert "timings" in text and "infer 100 ms" in text and "shape (256, 256, 3)" in text
    assert "acknowledged by Dr Gray" in text and "told the surgeon" in text
    with Store.open(case_db, readonly=True) as store:
        chain = store.verify_audit()
    assert f"#{chain.head_seq}" in text and chain.head_hash in text
    assert parsed.links == []  # no stylesheet, script or link: nothing from a network
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert len(parsed.images) == 4  # two assessed (overlay), failed and pending (image only)
    for src in parsed.images:
        picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        picture.load()
        assert picture.format == "PNG" and min(picture.size) >= 8
    assert "Grad-CAM over the image" in text
    assert "@media print" in path.read_text()
    assert _digest(case_db) == before  # the report opened the database read-only


def test_report_with_opaque_ids_names_no_folder(case_db: Path, tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[cases]\ndisplay = "id"\n')
    path, parsed = _report(case_db, tmp_path / "out", config)
    body = path.read_text()
    assert FOLDER not in body and "LPL_1.tif" not in body
    assert "Case case " in " ".join(parsed.text)
    listed = json.loads(_cli("list", "--json", "--db", str(case_db), config=config).stdout)
    assert FOLDER not in json.dumps(listed)


def test_report_without_the_source_images(case_db: Path, tmp_path: Path) -> None:
    export = tmp_path / "export" / FOLDER
    for file in export.iterdir():
        file.unlink()
    _path, parsed = _report(case_db, tmp_path / "out")
    text = " ".join(parsed.text)
    assert "Grad-CAM only: the source image is not reachable from here" in text
    assert len(parsed.images) == 2


def test_case_commands_load_no_torch(case_db: Path, tmp_path: Path) -> None:
    code = ("import sys; from marginwatch.daemon.cli import main\n"
            f"for argv in (['case', 'list', '--db', {str(case_db)!r}],\n"
            f"             ['case', 'report', {FOLDER!r}, '--out', {str(tmp_path)!r},\n"
            f"              '--db', {str(case_db)!r}]):\n"
            "    try: main(argv)\n    except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_report_as_pdf_too(case_db: Path, tmp_path: Path) -> None:
    html_path, _parsed = _report(case_db, tmp_path / "out", None, "--pdf")
    pdf = html_path.with_suffix(".pdf")
    body = pdf.read_bytes()
    assert body.startswith(b"%PDF-") and body.rstrip().endswith(b"%%EOF")
    assert body.count(b"/Type /Page\n") + body.count(b"/Type /Page ") + body.count(
        b"/Type /Page>") >= 3  # summary, the images (4 on 2 pages), acknowledgements
    assert b"research use, not a diagnosis" in body  # the document's subject
    assert not list((tmp_path / "out").glob("*.partial"))
