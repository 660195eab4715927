"""Self-generated data (study 003): centrality properties (hypothesis), embeddings from the model's own
hidden states, methods 1-4 as SFT/DPO records, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.errors import HarnessError
from harness.inference.selfgen import Item, Scored, build_records, centrality, embed, medoid, score_items

FLOATS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
MATS = st.integers(1, 7).flatmap(lambda n: st.integers(1, 6).flatmap(
    lambda d: arrays(np.float64, (n, d), elements=FLOATS)))


def reference(e) -> list[float]:
    """Plain-Python float64 mean cosine to the others."""
    rows = [list(map(float, r)) for r in e]
    if len(rows) == 1:
        return [1.0]
    def cos(a, b):
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)
    return [sum(cos(r, o) for j, o in enumerate(rows) if j != i) / (len(rows) - 1) for i, r in enumerate(rows)]


@settings(max_examples=60, deadline=None)
@given(MATS)
@example(np.zeros((3, 2)))
@example(np.array([[1e-30, 0.0], [0.0, 1e-30]]))  # tiny norms must not underflow to 0
def test_scores_in_range_and_match_reference(e):
    s = centrality(e)
    assert s.shape == (e.shape[0],) and np.all(s >= -1.0) and np.all(s <= 1.0)
    np.testing.assert_allclose(s, reference(e / np.maximum(np.abs(e).max(1, keepdims=True), 1e-300)), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(MATS, st.randoms(use_true_random=False))
def test_permutation_invariance(e, rnd):
    perm = list(range(e.shape[0]))
    rnd.shuffle(perm)
    np.testing.assert_allclose(centrality(e)[perm], centrality(e[perm]), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(MATS, st.randoms(use_true_random=False))
def test_unique_medoid_is_picked_in_any_order(e, rnd):
    s = np.array(reference(e))
    best = int(np.argmax(s))
    if e.shape[0] > 1 and np.sort(s)[-1] - np.sort(s)[-2] < 1e-6:
        return  # no unique medoid
    perm = list(range(e.shape[0]))
    rnd.shuffle(perm)
    assert medoid(e) == best
    assert perm[medoid(e[perm])] == best


def test_clustered_candidate_wins():
    angles = np.radians([0.0, 20.0, 10.0, 190.0])  # the one at 10 degrees sits in the middle of the cluster
    e = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1.0], [3.0], [0.5], [2.0]])
    assert medoid(e) == 2


def test_n1_and_empty():
    assert centrality(np.ones((1, 4))).tolist() == [1.0]
    with pytest.raises(HarnessError, match="non-empty"):
        centrality(np.zeros((0, 3)))
    with pytest.raises(HarnessError, match="NaN"):
        centrality(np.array([[np.nan, 1.0], [1.0, 1.0]]))


def scored(scores, original="元の返答"):
    n = len(scores) - 1
    return Scored(Item("p1", "質問", original), tuple(f"候補{k}" for k in range(n)), tuple(scores))


@pytest.mark.parametrize("method,kind,want", [
    ("reuse", "sft", "元の返答"), ("pick", "sft", "候補1"), ("keep_low", "sft", "元の返答"), ("drop_low", "sft", None),
])
def test_methods_with_low_original(method, kind, want):
    s = scored([0.2, 0.9, 0.5, -0.3])  # the original (last) ranks last
    recs, stats = build_records([s], method, kind, system="sys")
    if want is None:
        assert recs == [] and stats["dropped"] == 1
    else:
        assert recs[0]["completion"][0]["content"] == want
        assert recs[0]["prompt"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "質問"}]


def test_methods_with_central_original_and_dpo():
    s = scored([0.2, 0.9, 0.5, 0.95])  # the original ranks first
    for method in ("pick", "drop_low", "keep_low"):
        recs, _ = build_records([s], method, "dpo")
        assert recs[0]["chosen"][0]["content"] == "候補1" and recs[0]["rejected"][0]["content"] == "候補0"
    recs, _ = build_records([s], "reuse", "dpo")
    assert recs[0]["chosen"][0]["content"] == "元の返答" and recs[0]["rejected"][0]["content"] == "候補0"
    with pytest.raises(HarnessError, match="unknown selfgen method 'best'; known: drop_low, keep_low, pick, reuse"):
        build_records([s], "best")


def test_embeddings_are_own_hidden_states_and_empty_is_an_error(chat_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(chat_model_dir), AutoTokenizer.from_pretrained(chat_model_dir)
    e = embed(model, tok, ["ごきげんよう", "こんにちは、元気です", "ごきげんよう"])
    assert e.shape == (3, model.config.hidden_size) and np.allclose(e[0], e[2], atol=1e-5)
    with pytest.raises(HarnessError, match="text 1 is empty"):
        embed(model, tok, ["a", "  "])
    items = [Item("p7", "質問です", "元の返答ですわ")]
    out = score_items(items, [["候補の一つ", "", "候補の二つ"]], model, tok)  # the empty one is left out
    assert out[0].candidates == ("候補の一つ", "候補の二つ") and len(out[0].scores) == 3
    with pytest.raises(HarnessError, match="item 'p7'.*every generated candidate is empty"):
        score_items(items, [["", " "]], model, tok)


def test_selfgen_cli(chat_model_dir, tmp_path):
    from harness.__main__ import main

    out = tmp_path / "sg.jsonl"
    rc = main(["selfgen", str(chat_model_dir), "--out", str(out), "--n", "3", "--limit", "3", "--kind", "dpo",
               "--max-new-tokens", "6", "--device", "cpu"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)
