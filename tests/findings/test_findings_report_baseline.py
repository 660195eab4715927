"""Findings files (atomic JSON/Markdown/PNG), the terminal table and the baseline comparison."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.findings import ClaimResult
from harness.findings.baseline import compare, compare_file, format_failure
from harness.findings.verdict import aggregate
from harness.findings.report import (atomic_write, load_json, plot_conflict_rates, plot_layer_deviation,
                                     table, write)


def row(measured, claim="C1", pair="dpo_d0/sft_d0", seed=None, tol=0.5):
    return ClaimResult.make(claim, pair, measured, 0.25, "<", reference_value=0.04, check="ratio", plan="tiny",
                            seed=seed, tolerance=tol)


def test_make_computes_margin_and_verdict():
    assert row(0.1).verdict == "pass" and row(0.1).margin == pytest.approx(0.15)
    assert row(0.3).verdict == "fail" and row(0.3).margin == pytest.approx(-0.05)
    assert row(math.nan).verdict == "fail"
    ge = ClaimResult.make("C5", "m", 1.0, 1.0, ">")
    assert ge.verdict == "fail"  # strict comparison: equality does not hold
    with pytest.raises(ValueError, match="comparator"):
        ClaimResult.make("C5", "m", 1.0, 1.0, "=>")


@pytest.mark.parametrize("comparator,at_threshold", [("<", "fail"), ("<=", "pass"), (">", "fail"), (">=", "pass")])
def test_comparators_at_the_threshold(comparator, at_threshold):
    """Equality decides strict against non-strict: a "<" that behaves as "<=" turns this red."""
    for t in (0.25, 0.0, 1.0, -3.5):
        assert ClaimResult.make("C", "p", t, t, comparator).verdict == at_threshold, (comparator, t)
    below, above = ClaimResult.make("C", "p", 0.2, 0.25, comparator), ClaimResult.make("C", "p", 0.3, 0.25, comparator)
    assert (below.passed, above.passed) == ((True, False) if "<" in comparator else (False, True))


def test_table_has_every_column_and_row():
    text = table([row(0.1), row(0.3, pair="dpo_d1/sft_d1")])
    head = text.splitlines()[0]
    for col in ("claim", "pair", "measured", "reference", "threshold", "margin", "verdict"):
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
    s = {x.key: x for x in aggregate([row(0.1, seed=0), row(0.3, seed=1), row(0.2, claim="C2", seed=0)])}
    assert not s[("C1", "dpo_d0/sft_d0", "ratio")].agree
    assert s[("C2", "dpo_d0/sft_d0", "ratio")].agree


def test_baseline_flags_verdict_flip_and_moves_beyond_tolerance(tmp_path):
    old = [row(0.10), row(0.10, pair="p2"), row(0.10, pair="p3"), row(0.1, pair="gone")]
    new = [row(0.30), row(0.16, pair="p2"), row(0.14, pair="p3")]
    c = compare(new, old)
    assert [(r.key[1], r.kind) for r in c.changes] == [("dpo_d0/sft_d0", "regression"), ("p2", "move")]
    assert [r.key[1] for r in c.failing] == ["dpo_d0/sft_d0", "p2"]  # the same model: both fail the session
    assert c.missing == [("C1", "gone", "ratio")] and c.shared == 3
    msg = format_failure(c.failing, tmp_path / "b.json")
    assert "verdict pass -> fail (regression" in msg and "+60.0%; tolerance 50%" in msg
    js, _ = write(tmp_path, "b", old, {"plan": "tiny"})
    assert compare_file(old, js).changes == []


def test_fail_to_pass_is_an_improvement_and_fails_only_when_strict():
    old, new = [row(0.30)], [row(0.10)]
    c = compare(new, old)
    assert [ch.kind for ch in c.changes] == ["improvement"] and c.failing == []
    assert [ch.kind for ch in compare(new, old, strict=True).failing] == ["improvement"]


def test_moves_near_zero_use_the_absolute_floor():
    """-0.00024 -> -0.00006 is +75 % relative but far below a floor of 0.01: no move."""
    def r(v, floor):
        return ClaimResult.make("C7", "sft_d1/d1", v, 0.0, ">", check="BLEU", tolerance=0.5, floor=floor)

    assert compare([r(-0.00006, 0.01)], [r(-0.00024, 0.01)]).changes == []
    assert [ch.kind for ch in compare([r(-0.00006, 0.0)], [r(-0.00024, 0.0)]).changes] == ["move"]
    assert [ch.kind for ch in compare([r(-0.02, 0.01)], [r(-0.00024, 0.01)]).changes] == ["move"]


def test_baseline_of_another_model_names_both_and_reports_moves_without_failing():
    old_meta = {"plan": "smollm2", "base": "SmolLM2-135M-Instruct-Q8_0.gguf", "run": "a"}
    new_meta = {"plan": "gemma3", "base": "gemma-3-270m-it-Q8_0.gguf", "run": "b"}
    old, new = [row(0.10), row(0.10, pair="p2")], [row(0.20), row(0.30, pair="p2")]
    c = compare(new, old, old_meta=old_meta, new_meta=new_meta)
    assert "gemma3" in c.header and "smollm2" in c.header and "gemma-3-270m" in c.header
    assert [(ch.key[1], ch.kind) for ch in c.changes] == [("dpo_d0/sft_d0", "move"), ("p2", "regression")]
    assert [ch.key[1] for ch in c.failing] == ["p2"]  # across models a move is the finding, a lost claim fails
    assert len(compare(new, old, old_meta=old_meta, new_meta=new_meta, strict=True).failing) == 2


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
    assert '"reference_value": 0.04' in first.json_path.read_text()


def test_conflict_plot_pairs_come_from_the_specs(family, tmp_path):
    """The conflict-rate plot draws the task-vector pairs the specs' conflict_ratio checks compare (C4's), and
    a user's spec with other nodes draws those."""
    from harness.findings import load_specs
    from harness.findings.report import conflict_pairs

    source = family()
    specs = load_specs(Path(__file__).resolve().parents[2] / "fixtures" / "claims")
    assert conflict_pairs(specs, source) == [("sft_d0", "sft_d1", "base"), ("dpo_d0", "dpo_d1", "base"),
                                             ("dpo_d0@sft_d2", "dpo_d1@sft_d2", "base")]
    mine = [s for s in specs if s.id == "C4"][0]
    mine = dataclasses.replace(mine, pairs=tuple(dataclasses.replace(p, roles=tuple(
        (r, n.replace("sft_d2", "sft_d1")) for r, n in p.roles)) for p in mine.pairs[1:]))
    assert conflict_pairs([mine], source) == [("sft_d0", "sft_d1", "base"), ("dpo_d0@sft_d1", "dpo_d1@sft_d1", "base")]
