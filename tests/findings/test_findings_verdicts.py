"""Verdicts across training seeds: the aggregate rule (pass / fail / inconclusive / not measured), rows a
statistic could not measure, the reports' counts, the baseline's seed intervals and old findings files."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from harness.findings import STATISTICS, ClaimResult, evaluate, load_specs
from harness.findings.baseline import compare, format_report, prediction_interval
from harness.findings.report import load_json, table, to_json, to_markdown, write
from harness.findings.verdict import (FAIL, INCONCLUSIVE, NOT_MEASURED, PASS, InconclusiveWarning, aggregate,
                                      assert_holds, summary_line, t_quantile)

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ROOT / "fixtures" / "baselines"
COMPARATORS = st.sampled_from(["<", "<=", ">", ">="])
THRESHOLDS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
VALUES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def check(values, threshold=0.25, comparator="<", **kw):
    """The one aggregate of ``values`` measured under training seeds 0, 1, ..."""
    rows = [ClaimResult.make("C1", "dpo_d0/sft_d0", v, threshold, comparator, check="ratio", seed=i, **kw)
            for i, v in enumerate(values)]
    [c] = aggregate(rows)
    return c


def side_verdict(above: bool, comparator: str) -> str:
    return PASS if above == (comparator in (">", ">=")) else FAIL


# ---- the aggregate rule ----------------------------------------------------------------------------

@given(value=VALUES, threshold=THRESHOLDS, comparator=COMPARATORS)
@example(value=0.25, threshold=0.25, comparator="<")  # equal to the threshold: the comparison decides
@example(value=0.25, threshold=0.25, comparator="<=")
def test_one_seed_is_the_rows_verdict(value, threshold, comparator):
    c = check([value], threshold, comparator)
    row = ClaimResult.make("C1", "dpo_d0/sft_d0", value, threshold, comparator, check="ratio")
    assert c.verdict == row.verdict and c.interval is None and c.n == 1


@given(threshold=THRESHOLDS, distance=st.floats(1e-3, 1e3), spread=st.lists(st.floats(0, 1), min_size=2, max_size=8),
       above=st.booleans(), comparator=COMPARATORS)
@example(threshold=0.25, distance=0.1, spread=[0.5, 0.5], above=False, comparator="<")  # equal values, n=2
@example(threshold=0.25, distance=0.1, spread=[0.0, 1.0], above=True, comparator=">")  # n=2, widest spread
def test_seeds_far_on_one_side_give_that_verdict(threshold, distance, spread, above, comparator):
    """Every seed at least ``distance`` from the threshold and within distance/10 of each other: the 95% interval
    (at most 6.4 x that range wide on each side, for n=2) stays clear of the threshold."""
    sign = 1 if above else -1
    values = [threshold + sign * (distance + distance / 10 * u) for u in spread]
    c = check(values, threshold, comparator)
    assert c.verdict == side_verdict(above, comparator), (values, c.interval)
    assert c.n == len(values) and c.interval is not None and not c.interval[0] < threshold < c.interval[1]


@given(threshold=THRESHOLDS, below=st.floats(1e-3, 1e3), above=st.floats(1e-3, 1e3),
       others=st.lists(VALUES, max_size=6), comparator=COMPARATORS)
@example(threshold=0.25, below=0.01, above=0.01, others=[], comparator="<")  # n=2
# seven seeds far above, one below: the 95% interval of the mean clears the threshold, the seeds' verdicts do not
@example(threshold=0.5, below=0.5, above=0.5, others=[1.0] * 6, comparator=">")
def test_seeds_straddling_the_threshold_are_inconclusive(threshold, below, above, others, comparator):
    c = check([threshold - below, threshold + above, *others], threshold, comparator)
    assert c.verdict == INCONCLUSIVE and not c.agree


def test_a_threshold_inside_the_interval_of_the_mean_is_inconclusive_although_the_seeds_agree():
    c = check([0.2, 0.24])  # both < 0.25, but two seeds this far apart cannot place the mean
    assert c.verdicts == (PASS, PASS) and c.interval[0] < 0.25 < c.interval[1]
    assert c.verdict == INCONCLUSIVE
    tight = check([0.2, 0.2001, 0.2002])
    assert tight.verdict == PASS and tight.interval[1] < 0.25


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 10, 30, 101])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_t_quantile_matches_scipy(dof, confidence):
    from scipy.special import stdtrit

    assert t_quantile(dof, confidence) == pytest.approx(stdtrit(dof, 0.5 + confidence / 2), rel=1e-9)


def test_aggregate_statistics_and_interval():
    c = check([0.1, 0.12, 0.14])
    assert c.n == 3 and c.values == (0.1, 0.12, 0.14) and c.seeds == (0, 1, 2)
    assert c.mean == pytest.approx(0.12) and c.stdev == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2 dof)
    assert c.interval == pytest.approx((0.12 - half, 0.12 + half))
    row = c.as_row()
    assert row.measured == pytest.approx(0.12) and row.seed is None and row.margin == pytest.approx(0.13)


def test_assert_holds_fails_a_failing_check_warns_an_inconclusive_one_and_strict_fails_it():
    fail = [ClaimResult.make("C1", "p", v, 0.25, "<", check="ratio", seed=i) for i, v in enumerate([0.3, 0.301])]
    with pytest.raises(AssertionError, match="C1 ratio on p: measured 0.3005"):
        assert_holds(fail)
    unsure = [ClaimResult.make("C1", "p", v, 0.25, "<", check="ratio", seed=i) for i, v in enumerate([0.1, 0.3])]
    with pytest.warns(InconclusiveWarning, match=r"95% interval \[-1.071, 1.471\]"):
        assert_holds(unsure)
    with pytest.raises(AssertionError, match="--findings-strict"):
        assert_holds(unsure, strict=True)
    nm = ClaimResult.not_measured("C7", "sft_d1/d1", 0.0, ">", "no BERTScore model", check="BERTScore")
    assert_holds([nm])  # never fails a case
    assert_holds([nm], strict=True)


# ---- not measured -----------------------------------------------------------------------------------

def c7_rows():
    """The real C7 spec on a table 24 without BERTScore columns (the encoder could not be loaded)."""
    from harness.evaluate.similarity import Table

    spec = {s.id: s for s in load_specs(ROOT / "fixtures" / "claims", STATISTICS)}["C7"]
    tab = Table("table24", "t", ["sft_d0", "sft_d1"], ["BLEU(D0)", "BLEU(D1)", "BERTScore(D0)", "BERTScore(D1)"],
                [[0.1, 0.02, None, None], [0.03, 0.09, None, None]],
                notes=["BERTScore skipped: no encoder offline"])
    return [r for p in spec.pairs for r in evaluate(spec, tab, p, plan="tiny")]


def test_a_check_that_cannot_be_measured_is_a_row_with_its_reason():
    rows = c7_rows()
    nm = [r for r in rows if r.verdict == NOT_MEASURED]
    assert [r.check for r in nm] == ["BERTScore(own)-BERTScore(other)"] * 2
    assert all(math.isnan(r.measured) and r.note == "BERTScore skipped: no encoder offline" for r in nm)
    assert [r.verdict for r in rows if r not in nm] == [PASS, PASS]
    text = table(rows)
    assert "NOT MEASURED" in text and "BERTScore(own)-BERTScore(other)" in text
    assert summary_line(aggregate(rows)) == "findings: 2 pass, 0 fail, 0 inconclusive, 2 not measured"


def test_reports_count_verdicts_and_show_not_measured_rows(tmp_path):
    rows = c7_rows() + [ClaimResult.make("C1", "dpo_d0/sft_d0", v, 0.25, "<", check="ratio", seed=i)
                        for i, v in enumerate([0.1, 0.3])]
    rows += [ClaimResult.make("C1", "dpo_d0/sft_d0 [c1_dpo_at_sft_lr]", 0.9, 0.25, "<", check="ratio",
                              note="negative control c1_dpo_at_sft_lr: expected to fail")]
    data = to_json(rows, {"plan": "tiny"})
    assert data["counts"] == {"pass": 2, "fail": 0, "inconclusive": 1, "not measured": 2}
    assert data["control_counts"] == {"pass": 0, "fail": 1, "inconclusive": 0, "not measured": 0}
    assert len(data["results"]) == 7 and len(data["checks"]) == 6
    c1 = next(c for c in data["checks"] if c["pair"] == "dpo_d0/sft_d0")
    assert c1["verdict"] == "inconclusive" and c1["values"] == [0.1, 0.3] and c1["seeds"] == [0, 1]
    assert c1["n"] == 2 and c1["mean"] == pytest.approx(0.2) and len(c1["interval"]) == 2
    nm = next(c for c in data["checks"] if c["verdict"] == "not measured")
    assert nm["mean"] == "nan" and nm["note"] == "BERTScore skipped: no encoder offline"
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN literal
    md = to_markdown(rows, {"plan": "tiny"})
    assert ("findings: 2 pass, 0 fail, 1 inconclusive, 2 not measured; negative controls: 1 fail" in md)
    assert "- C7 BERTScore(own)-BERTScore(other) [sft_d0/d0]: BERTScore skipped: no encoder offline" in md
    assert "| 0.2 [-1.071, 1.471] n=2 |" in md and "0: 0.1, 1: 0.3" in md
    js, _ = write(tmp_path, "r", rows, {"plan": "tiny"})
    back = load_json(js)[1]  # results round-trip, not-measured rows included (NaN is no equal of itself)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in rows] and math.isnan(back[1].measured)


# ---- the baseline's seed intervals -------------------------------------------------------------------

def seeds_rows(values, tol=0.5, floor=0.0):
    return [ClaimResult.make("C5", "dpo_d0@sft_d1", v, 1.0, ">", check="growth", seed=i, tolerance=tol, floor=floor)
            for i, v in enumerate(values)]


def test_a_move_beyond_the_seeds_spread_is_flagged_where_the_tolerance_would_hide_it():
    old, new = seeds_rows([2.00, 2.01, 1.99]), seeds_rows([2.40, 2.41, 2.39])  # +20%: inside the 50% tolerance
    c = compare(new, old, old_meta={"plan": "tiny"}, new_meta={"plan": "tiny"})
    assert [ch.kind for ch in c.changes] == ["move"] and c.failing
    text = c.changes[0].describe()
    assert "outside the baseline's 95% prediction interval [1.965, 2.035] for a mean of 3 seed(s), from its 3 seeds" in text
    # the same move against a single-seed baseline: the tolerance rule, which lets it pass
    assert compare(new, old[:1]).changes == []
    # and a new mean inside the seeds' spread is no move
    assert compare(seeds_rows([2.01, 2.02, 2.0]), old).changes == []


def test_the_prediction_interval_is_never_narrower_than_the_floor_and_other_models_keep_the_tolerance():
    [old] = aggregate(seeds_rows([2.0, 2.0, 2.0], floor=0.05))
    assert prediction_interval(old, 3, 0.05) == pytest.approx((1.95, 2.05))
    assert compare(seeds_rows([2.04] * 3, floor=0.05), seeds_rows([2.0] * 3, floor=0.05)).changes == []
    [old] = aggregate(seeds_rows([2.0, 2.02, 1.98]))
    lo, hi = prediction_interval(old, 1)
    assert (hi - 2.0) == pytest.approx(4.302652729911275 * 0.02 * math.sqrt(1 + 1 / 3))
    other = compare(seeds_rows([2.4] * 3), seeds_rows([2.0, 2.01, 1.99]), old_meta={"plan": "smollm2"},
                    new_meta={"plan": "gemma3"})
    assert other.changes == []  # another model: +20% is inside the tolerance


def test_not_measured_checks_are_not_compared():
    nm = [dataclasses.replace(r, verdict=NOT_MEASURED, measured=math.nan, note="no encoder") for r in seeds_rows([2.0])]
    c = compare(nm, seeds_rows([2.0]))
    assert c.changes == [] and c.unmeasured == [("C5", "dpo_d0@sft_d1", "growth")]
    assert "not measured in one of the runs" in format_report(c, "b.json")[1][0]


# ---- old findings files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in BASELINES.glob("*.json")))
def test_stored_baselines_load_and_compare_with_themselves(name):
    meta, rows = load_json(BASELINES / name)
    assert rows  # tiny-cpu.json was written before the aggregates ("checks"); the real bases' files after
    c = compare(rows, rows, old_meta=meta, new_meta=meta)
    assert c.changes == [] and c.shared == len(aggregate(rows))
    if name == "tiny-cpu.json":
        assert c.shared == 39


def test_an_old_file_with_one_row_per_seed_compares_by_its_seeds(tmp_path):
    """A findings file written before ``checks`` existed (``results`` per seed and ``spread``): its seeds
    give the prediction interval."""
    rows = seeds_rows([2.00, 2.01, 1.99])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"meta": {"plan": "tiny", "seeds": [0, 1, 2]}, "results": [r.to_dict() for r in rows],
                               "spread": [{"claim": "C5", "pair": "dpo_d0@sft_d1", "check": "growth",
                                           "values": [2.0, 2.01, 1.99], "stdev": 0.01, "agree": True}]}))
    meta, back = load_json(old)
    assert back == rows
    c = compare(seeds_rows([2.4]), back, old_meta=meta, new_meta={"plan": "tiny"})
    assert [ch.kind for ch in c.changes] == ["move"] and "prediction interval" in c.changes[0].describe()
