"""C1–C5 on synthetic checkpoint families: each holds on the healthy family and fails on its
negative control, through the real specs, statistics and ``harness.diff``."""

from __future__ import annotations

from pathlib import Path

import pytest

from findings_helpers import add, dpo_delta, healthy, randn, sft_delta
from harness.findings import evaluate, load_specs, STATISTICS

ROOT = Path(__file__).resolve().parents[2]
SPECS = {s.id: s for s in load_specs(ROOT / "fixtures" / "claims", STATISTICS)}


def verdicts(spec_id, source):
    spec = SPECS[spec_id]
    return {(r.pair, r.check): r for p in spec.pairs for r in evaluate(spec, source, p, plan="synthetic")}


@pytest.fixture(scope="module")
def healthy_states():
    return healthy()


@pytest.mark.parametrize("claim", ["C1", "C2", "C3", "C4", "C5"])
def test_claim_holds_on_healthy_family(claim, family, healthy_states):
    rows = verdicts(claim, family(healthy_states))
    assert rows and all(r.passed for r in rows.values()), [r.describe() for r in rows.values() if not r.passed]


def test_c1_fails_when_dpo_moves_like_sft(family, healthy_states):
    states = dict(healthy_states)
    states["dpo_d0"] = add(states["base"], sft_delta(99))  # DPO at SFT's lr and epochs: an SFT-sized step
    rows = verdicts("C1", family(states))
    bad = [k for k, r in rows.items() if not r.passed]
    assert bad == [("dpo_d0/sft_d0", "L2(dpo)/L2(sft)")]
    assert rows[bad[0]].measured > 0.5


def test_c2_fails_when_update_shrinks_with_depth(family, healthy_states):
    states = dict(healthy_states)
    states["sft_d1"] = add(states["base"], randn(7, lambda i: 0.1 * (LAYERS_INV(i))))
    rows = verdicts("C2", family(states))
    failed = {k for k, r in rows.items() if not r.passed}
    assert failed == {("sft_d1", "last/first quarter L2"), ("sft_d1", "spearman(layer, L2)")}


def LAYERS_INV(i: int) -> float:
    return 2.0 - i / 8


def test_c3_fails_on_forced_return_to_base(family, healthy_states):
    states = dict(healthy_states)
    # DPO_D0 after SFT_D1 lands back next to base: the "return" the study did not find.
    states["dpo_d0@sft_d1"] = add(states["base"], dpo_delta(5))
    rows = verdicts("C3", family(states))
    assert all(not r.passed for r in rows.values()), [r.describe() for r in rows.values()]


def test_c4_fails_when_dpo_task_vectors_oppose(family, healthy_states):
    states = dict(healthy_states)
    tau = sft_delta(42)
    states["dpo_d0"] = add(states["base"], tau)
    states["dpo_d1"] = add(states["base"], tau, -1.0)  # mirrored preferences: every position conflicts
    rows = verdicts("C4", family(states))
    assert not rows[("dpo_d0/dpo_d1/sft_d0/sft_d1", "conflict rate dpo/sft")].passed
    assert not rows[("dpo_d0/dpo_d1/sft_d0/sft_d1", "conflict-limited L2 dpo/sft")].passed
    assert rows[("dpo_d0@sft_d2/dpo_d1@sft_d2/sft_d0/sft_d1", "conflict rate dpo/sft")].passed


def test_c5_fails_on_zero_step_dpo(family, healthy_states):
    states = dict(healthy_states)
    states["dpo_d1@sft_d1"] = {k: v.clone() for k, v in states["sft_d1"].items()}  # max_steps = 0
    rows = verdicts("C5", family(states))
    growth = rows[("dpo_d1@sft_d1/sft_d1", "L2(M,base)/L2(start,base)")]
    assert growth.measured == pytest.approx(1.0) and not growth.passed


def test_diffs_are_cached_on_disk_and_reused(family, healthy_states):
    src = family(healthy_states)
    first = verdicts("C1", src)
    # dpo_d0, sft_d0, dpo_d1, sft_d1 (vs base), dpo_d0@sft_d2, dpo_d1@sft_d2 (vs sft_d2), sft_d2 (vs base)
    assert src.computed == 7
    again = type(src)(src.nodes, src.cache_dir, device="cpu")
    second = verdicts("C1", again)
    assert again.computed == 0
    assert {k: r.measured for k, r in first.items()} == {k: r.measured for k, r in second.items()}
