"""C6's statistics and rows: P(stop | reply) and its gain over the base, sampled stop rate, loop rate, the budget
note, informational checks (verdict "info"), and every row's ``base_value`` in the JSON and the tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.findings.report import load_json, markdown_table, rows, table, to_json
from harness.findings.spec import load_spec
from harness.findings.statistics import GenerationSource, NotMeasured
from harness.findings.verdict import ClaimResult, evaluate
from harness.inference.stopprob import StopProbs

ROOT = Path(__file__).resolve().parents[2]
C6 = ROOT / "fixtures" / "claims" / "c6_eos_learned.toml"


def gens(stopped, ids=None, hit=None, **kw) -> GenerationSource:
    n = len(stopped)
    return GenerationSource(list(stopped), ["x"] * n, ["</s>"], {}, ids if ids is not None else [[1, 2]] * n,
                            hit if hit is not None else [not s for s in stopped], **kw)


def probe(value: float, calls: list | None = None):
    def f(limit: int) -> StopProbs:
        if calls is not None:
            calls.append(limit)
        return StopProbs((value,) * 3, (value > 0.5,) * 3)
    return f


def source(node_p=0.9, base_p=0.01, greedy=(True, False, False, False)) -> GenerationSource:
    loop = [5, 6, 7] * 10
    base = gens([False] * 4, stop_probe=probe(base_p), sample=lambda t, p, s: gens([False] * 4))
    return gens(greedy, ids=[[1, 2]] + [loop, loop, list(range(30))], stop_probe=probe(node_p),
                sample=lambda t, p, s: gens([True, True, True, False]), base_source=base)


def pair():
    return load_spec(C6).pairs[0]


def by_check(results):
    return {r.check: r for r in results}


def test_c6_rows_carry_base_values_and_informational_verdicts():
    got = by_check(evaluate(load_spec(C6), source(), pair(), plan="p"))
    assert set(got) == {"P(stop | reply)", "P(stop | reply) gain", "EOS text rate", "stop rate",
                        "sampled stop rate", "loop rate"}
    assert got["P(stop | reply)"].measured == pytest.approx(0.9) and got["P(stop | reply)"].verdict == "pass"
    assert got["P(stop | reply)"].base_value == pytest.approx(0.01)
    assert got["P(stop | reply) gain"].measured == pytest.approx(0.89)
    assert got["P(stop | reply) gain"].base_value is None  # the base has no base of its own
    assert got["stop rate"].measured == 0.25 and got["stop rate"].base_value == 0.0
    assert got["sampled stop rate"].measured == 0.75 and got["sampled stop rate"].base_value == 0.0
    assert got["loop rate"].measured == pytest.approx(2 / 3)  # 2 of the 3 runaways repeat a 6-gram 3 times
    for name in ("stop rate", "sampled stop rate", "loop rate"):
        assert got[name].verdict == "info" and got[name].passed, name  # informational: never fails the claim


def test_the_004_bug_fails_the_verdict_even_when_greedy_decoding_stops():
    got = by_check(evaluate(load_spec(C6), source(node_p=0.003, base_p=0.004, greedy=(True,) * 4), pair()))
    assert got["P(stop | reply)"].verdict == "fail" and got["P(stop | reply) gain"].verdict == "fail"
    assert got["stop rate"].verdict == "info"


def test_sampling_and_the_probe_run_once_per_setting():
    calls: list = []
    src = gens([True], stop_probe=probe(0.7, calls))
    assert src.stop_probs(100) is src.stop_probs(100) and calls == [100]
    assert "P(stop | reply) over 3 trained replies: mean 0.7" in " ".join(src.notes)
    with pytest.raises(NotMeasured):
        gens([True]).stop_probs(100)
    with pytest.raises(NotMeasured):
        gens([True]).sampled(0.7, 0.9, 0)


def test_loop_rate_is_zero_without_runaways_and_needs_token_ids():
    from harness.findings.statistics import loop_rate

    assert loop_rate(gens([True, True]), pair()) == 0.0
    with pytest.raises(NotMeasured):
        loop_rate(GenerationSource([False], ["x"]), pair())


@pytest.mark.parametrize("budget, longest, why", [
    (48, 21, "(the 48-token floor: 1.5x the longest trained reply, 21 tokens, is not above it)"),
    (48, 32, "(the 48-token floor: 1.5x the longest trained reply, 32 tokens, is not above it)"),
    (56, 33, "(1.5x the longest trained reply, 33 tokens)"),
    (112, 74, "(1.5x the longest trained reply, 74 tokens)"),
    (48, 0, "(the 48-token floor)"),
    (64, 0, None),
])
def test_budget_note_names_what_set_the_budget(budget, longest, why):
    note = GenerationSource([True, False], ["a", "b"], meta={"max_new_tokens": budget, "longest_reply": longest,
                                                              "n": 2, "hit_max": 1}).notes[0]
    assert note.startswith(f"2 prompts, budget {budget} new tokens") and note.endswith("1 hit it")
    if why is None:
        assert "(" not in note
    else:
        assert why in note


def test_base_column_in_tables_and_json_round_trip(tmp_path):
    a = ClaimResult.make("C6", "sft_d0", 0.97, 0.5, ">=", check="P(stop | reply)", base_value=0.004)
    b = ClaimResult.make("C6", "sft_d0", 0.68, 0.9, ">=", check="stop rate", informational=True)
    assert rows([a, b]) == [("C6", "sft_d0", "P(stop | reply)", "0.97", "0.004", "-", ">= 0.5", "0.47", "PASS"),
                            ("C6", "sft_d0", "stop rate", "0.68", "-", "-", ">= 0.9", "-0.22", "INFO")]
    head = table([a, b]).splitlines()[0].split()
    assert head[:5] == ["claim", "pair", "check", "measured", "base"]
    assert "| measured | base | reference |" in markdown_table([a, b])
    path = tmp_path / "f.json"
    path.write_text(json.dumps(to_json([a, b, ClaimResult.make("C", "p", 1, 0, ">", base_value=math.nan)], {})))
    _, back = load_json(path)
    assert back[0] == a and back[1] == b and math.isnan(back[2].base_value)


def test_findings_written_before_base_values_still_load():
    _, results = load_json(ROOT / "fixtures" / "baselines" / "tiny-cpu.json")
    assert results and all(r.base_value is None for r in results)


def test_informational_must_be_a_boolean(tmp_path):
    text = C6.read_text().replace("informational = true", 'informational = "yes"', 1)
    (tmp_path / "c6.toml").write_text(text)
    with pytest.raises(LoadError, match=r"c6\.toml: field 'check\[3\]\.informational': must be true or false"):
        load_spec(tmp_path / "c6.toml")


def test_a_check_made_informational_is_no_verdict_flip_against_a_baseline():
    from harness.findings.baseline import MOVE, compare

    old = ClaimResult.make("C6", "sft_d0", 0.97, 0.9, ">=", check="stop rate")
    same = ClaimResult.make("C6", "sft_d0", 0.97, 0.9, ">=", check="stop rate", informational=True)
    moved = ClaimResult.make("C6", "sft_d0", 0.5, 0.9, ">=", check="stop rate", tolerance=0.1, informational=True)
    assert compare([same], [old]).changes == []
    assert [c.kind for c in compare([moved], [old]).changes] == [MOVE]
