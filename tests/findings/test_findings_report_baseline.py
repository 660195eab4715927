"""Findings files (atomic JSON/Markdown/PNG), the terminal table and the baseline comparison."""

from __future__ import annotations

import json
import math

import pytest

from harness.errors import LoadError
from harness.findings import ClaimResult
from harness.findings.baseline import compare, compare_file, format_failure
from harness.findings.report import (atomic_write, load_json, plot_conflict_rates, plot_layer_deviation, spreads,
                                     table, write)


def row(measured, claim="C1", pair="dpo_d0/sft_d0", seed=None, tol=0.5):
    return ClaimResult.make(claim, pair, measured, 0.25, "<", seed_value=0.04, check="ratio", plan="tiny",
                            seed=seed, tolerance=tol)


def test_make_computes_margin_and_verdict():
    assert row(0.1).verdict == "pass" and row(0.1).margin == pytest.approx(0.15)
    assert row(0.3).verdict == "fail" and row(0.3).margin == pytest.approx(-0.05)
    assert row(math.nan).verdict == "fail"
    ge = ClaimResult.make("C5", "m", 1.0, 1.0, ">")
    assert ge.verdict == "fail"  # strict comparison: equality does not hold
    with pytest.raises(ValueError, match="comparator"):
        ClaimResult.make("C5", "m", 1.0, 1.0, "=>")


def test_table_has_every_column_and_row():
    text = table([row(0.1), row(0.3, pair="dpo_d1/sft_d1")])
    head = text.splitlines()[0]
    for col in ("claim", "pair", "measured", "seed value", "threshold", "margin", "verdict"):
        assert col in head
    assert "PASS" in text and "FAIL" in text and "< 0.25" in text and "0.04" in text


def test_files_round_trip_and_leave_no_temporaries(tmp_path):
    rows = [row(0.1, seed=0), row(0.12, seed=1), row(math.inf, claim="C3")]
    js, md = write(tmp_path / "tiny", "run1", rows, {"plan": "tiny", "run": "run1"})
    meta, back = load_json(js)
    assert meta["plan"] == "tiny" and back == rows
    assert "| C1 |" in md.read_text() and "Spread across training seeds" in md.read_text()
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["run1.json", "run1.md"]
    assert json.loads(js.read_text())["spread"][0]["values"] == [0.1, 0.12]


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, "old")

    with pytest.raises(TypeError):  # fails after the temporary file was created
        atomic_write(target, object())  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_load_json_names_the_file(tmp_path):
    with pytest.raises(LoadError, match="nope.json: findings file not found"):
        load_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(LoadError, match="bad.json: not a findings JSON"):
        load_json(bad)


def test_spread_flags_disagreeing_seeds():
    s = {x.key: x for x in spreads([row(0.1, seed=0), row(0.3, seed=1), row(0.2, claim="C2", seed=0)])}
    assert not s[("C1", "dpo_d0/sft_d0", "ratio")].agree
    assert s[("C2", "dpo_d0/sft_d0", "ratio")].agree


def test_baseline_flags_verdict_flip_and_moves_beyond_tolerance(tmp_path):
    old = [row(0.10), row(0.10, pair="p2"), row(0.10, pair="p3"), row(0.1, pair="gone")]
    new = [row(0.30), row(0.16, pair="p2"), row(0.14, pair="p3")]
    regs, missing = compare(new, old)
    assert [(r.key[1], r.kind) for r in regs] == [("dpo_d0/sft_d0", "verdict"), ("p2", "value")]
    assert missing == [("C1", "gone", "ratio")]
    msg = format_failure(regs, tmp_path / "b.json")
    assert "verdict flipped pass -> fail" in msg and "+60.0%, tolerance 50%" in msg
    js, _ = write(tmp_path, "b", old, {"plan": "tiny"})
    assert compare_file(old, js) == ([], [])


def test_plots_are_written(tmp_path):
    rep = {"layers": [{"layer": i, "l2": 1.0 + i, "conflict_rate": 0.01 * (i + 1)} for i in range(4)],
           "total": {"l2": 5.0}}
    a = plot_layer_deviation({"sft_d0": rep}, tmp_path / "dev.png", "t")
    b = plot_conflict_rates({"x vs y": rep}, tmp_path / "conf.png", "t")
    assert a.stat().st_size > 1000 and b.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.png", "dev.png"]


def test_findings_record_library_versions_and_baseline_names_changes(tmp_path):
    from importlib.metadata import version

    from harness.findings.session import finish

    first = finish([row(0.1)], findings_dir=tmp_path, plan="tiny", run="a", meta={}, baseline=None)
    meta, _ = load_json(first.json_path)
    assert set(meta["versions"]) >= {"torch", "transformers", "trl", "peft", "bitsandbytes"}
    assert meta["versions"]["transformers"] == version("transformers")
    assert "transformers " + version("transformers") in first.md_path.read_text()
    same = finish([row(0.1)], findings_dir=tmp_path, plan="tiny", run="b", meta={}, baseline=str(first.json_path))
    assert same.version_changes == []
    # a baseline recorded with another trl: the comparison names the library and both versions
    data = json.loads(first.json_path.read_text())
    data["meta"]["versions"]["trl"] = "0.9.0"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    moved = finish([row(0.1)], findings_dir=tmp_path, plan="tiny", run="c", meta={}, baseline=str(old))
    assert moved.version_changes == [f"trl 0.9.0 -> {version('trl')}"]
    assert moved.regressions == []
