"""harness.atomic: a write either lands whole or leaves nothing behind."""

import json

import pytest

from harness.atomic import atomic_path, write_bytes, write_json


def test_write_json_roundtrip_keeps_japanese(tmp_path):
    path = write_json(tmp_path / "sub" / "a.json", {"reply": "ですわ"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"reply": "ですわ"}
    assert "ですわ" in path.read_text(encoding="utf-8")


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    write_bytes(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_suffix_is_kept_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
