"""Margin locations from sidecars and file names, on real folders; bad input never raises."""

from __future__ import annotations

import json
import os

import pytest
from marginwatch.daemon.locations import LocationRules, location_label, resolve
from marginwatch.engine.config import load_config
from marginwatch.engine.errors import ConfigError


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "export"
    (path / "case7").mkdir(parents=True)
    return path


RULES = LocationRules.from_config()


def _image(root, rel, sidecar=None, sidecar_name=None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"II*\0")
    if sidecar is not None:
        name = sidecar_name or (path.stem + ".json")
        raw = sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode()
        (path.parent / name).write_bytes(raw)
    return rel


def _resolve(root, rel):
    return resolve(os.path.realpath(root), rel, RULES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LPL_01.tif", "left-posterolateral"),
        ("scan-rpl-2.tif", "right-posterolateral"),
        ("01 APEX.tif", "apex"),
        ("BN_1.tif", "base"),
        ("lal.tif", "left-anterolateral"),
        ("POSTERIOR_1.tif", "unspecified"),  # not an abbreviation token
        ("scan_0001.tif", "unspecified"),
        ("LPLX_1.tif", "unspecified"),  # no token boundary
    ],
)
def test_file_name_pattern(root, name, expected):
    placement = _resolve(root, _image(root, f"case7/{name}"))
    assert (placement.case_folder, placement.location, placement.issue) == ("case7", expected, None)
    assert placement.source == ("default" if expected == "unspecified" else "filename")


def test_sidecar_wins_and_accepts_names_and_abbreviations(root):
    rel = _image(root, "case7/scan_01.tif", {"location": "Left Posterolateral", "operator": "x"})
    assert _resolve(root, rel).location == "left-posterolateral"
    rel = _image(root, "case7/scan_02.tif", {"location": "ral"})
    assert _resolve(root, rel).location == "right-anterolateral"
    rel = _image(root, "case7/scan_03.tif", {"location": "base"}, sidecar_name="scan_03.tif.json")
    placement = _resolve(root, rel)
    assert (placement.location, placement.source, placement.issue) == ("base", "sidecar", None)
    rel = _image(root, "case7/LPL_04.tif", {"location": "left_posterolateral"})  # agree
    assert _resolve(root, rel).issue is None


def test_nested_folders_belong_to_the_first(root):
    placement = _resolve(root, _image(root, "case7/day1/faces/APEX_1.tif"))
    assert (placement.case_folder, placement.location) == ("case7", "apex")


@pytest.mark.parametrize(
    ("sidecar", "said"),
    [
        (b"{not json", "not valid JSON (line 1 column 2)"),
        (b"\xff\xfe", "not UTF-8"),
        ([1, 2], "is a list; expected an object"),
        ({"face": "apex"}, 'no "location" text'),
        ({"location": 3}, 'no "location" text'),
        ({"location": "left lobe"}, "'left lobe', which is not one of apex, base"),
    ],
)
def test_bad_sidecar_gives_unspecified_with_a_reason(root, sidecar, said):
    rel = _image(root, "case7/LPL_01.tif", sidecar)
    placement = _resolve(root, rel)
    assert placement.location == "unspecified" and placement.case_folder == "case7"
    assert said in placement.issue and "location set to unspecified" in placement.issue
    assert "LPL_01" not in placement.issue  # the reason names no file (it goes in the audit)


def test_disagreeing_sidecar_and_name(root):
    rel = _image(root, "case7/LPL_01.tif", {"location": "right-posterolateral"})
    placement = _resolve(root, rel)
    assert placement.location == "unspecified" and placement.source == "conflict"
    assert "disagree: sidecar right-posterolateral, file name left-posterolateral" in (
        placement.issue)


def test_image_in_the_export_root(root):
    placement = _resolve(root, _image(root, "RPL_1.tif"))
    assert placement.case_folder is None and placement.location == "right-posterolateral"
    assert "directly in the export folder" in placement.issue


def test_sidecar_that_is_a_fifo_or_a_link_out_is_refused(root, tmp_path):
    rel = _image(root, "case7/scan_01.tif")
    os.mkfifo(root / "case7" / "scan_01.json")
    assert "not a regular file" in _resolve(root, rel).issue  # and it did not block
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"location": "apex"}))
    rel = _image(root, "case7/scan_02.tif")
    os.symlink(outside, root / "case7" / "scan_02.json")
    assert "link out of the export folder" in _resolve(root, rel).issue


def test_non_utf8_names(root):
    rel = os.fsencode("case7/") + b"\xff_LPL.tif"
    (root / "case7" / os.fsdecode(b"\xff_LPL.tif")).write_bytes(b"x")
    assert _resolve(root, rel).location == "left-posterolateral"
    folder = os.fsdecode(b"c\xffse")
    (root / folder).mkdir()
    placement = _resolve(root, f"{folder}/APEX.tif")
    assert placement.case_folder == folder  # the exact name: storage keeps any bytes


def test_configured_vocabulary_and_pattern(tmp_path, root):
    config = tmp_path / "m.toml"
    config.write_text(
        '[cases]\nlocations = ["left", "right"]\n'
        'filename_pattern = "^(?P<location>[LR])-"\nabbreviations = {L = "left", R = "right"}\n'
    )
    rules = LocationRules.from_config(load_config(config, environ={}).cases)
    rel = _image(root, "case7/L-01.tif")
    assert resolve(os.path.realpath(root), rel, rules).location == "left"
    rel = _image(root, "case7/scan.tif", {"location": "apex"})
    assert "not one of left, right" in resolve(os.path.realpath(root), rel, rules).issue


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('[cases]\nfilename_pattern = "(?P<loc>x)"', "named group (?P<location>...)"),
        ('[cases]\nfilename_pattern = "(["', "not a valid regular expression"),
        ('[cases]\nlocations = ["Left Side"]', "expected lower-case"),
        ('[cases]\nlocations = ["unspecified"]', "implicit"),
        ('[cases]\nabbreviations = {X = "nowhere"}', "not in cases.locations"),
        ('[cases]\ndisplay = "name"', "cases.display"),
    ],
)
def test_bad_cases_configuration_names_the_field(tmp_path, body, said):
    config = tmp_path / "m.toml"
    config.write_text(body + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    assert said.lower() in str(err.value).lower() and str(config) in str(err.value)


def test_location_label():
    assert location_label("left-posterolateral") == "LEFT POSTEROLATERAL"
    assert location_label(None) == "UNSPECIFIED"
