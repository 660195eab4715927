"""The weight statistics of a chained node read its parent, not the base: on the micro plan's real graph,
``parent(dpo)`` of ``dpo_d1@sft_d0`` is ``sft_d0`` (C1 measures the DPO step from there; C5's ``start`` is the
same node), so the DPO update is the step from sft_d0. The training side (that trl's reference is the parent)
is tests/train/test_train_seeds_reference.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.findings import load_specs
from harness.findings.diffs import DiffSource
from harness.findings.session import node_set
from harness.findings.spec import Pair
from harness.findings.statistics import l2_ratio, resolve

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
CHAINED = "dpo_d1@sft_d0"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> DiffSource:
    from harness.train import build, load_plan

    plan = load_plan(MICRO)
    fixtures = os.environ.get("HARNESS_FIXTURES_DIR") or tmp_path_factory.mktemp("fx")
    graph = build(plan, only=CHAINED, fixtures_dir=fixtures, device="cpu", progress=False)
    return DiffSource(node_set(plan, graph), None, device="cpu")


def test_parent_of_a_chained_dpo_node_is_its_sft_start(source):
    pair = Pair((("dpo", CHAINED), ("sft", "sft_d0")))
    assert resolve(source, pair, "parent(dpo)") == "sft_d0"
    assert resolve(source, pair, "parent(sft)") == "base" == resolve(source, pair, "base")


def test_the_c1_ratio_of_a_chained_node_measures_the_step_from_its_parent(source):
    """C1's own check on the chained pair: L2(sft_d0 -> dpo) over L2(base -> sft_d0), not L2(base -> dpo)."""
    [check] = {s.id: s for s in load_specs(ROOT / "fixtures" / "claims")}["C1"].checks
    params = check.kwargs()
    assert params == {"num": ("parent(dpo)", "dpo"), "den": ("parent(sft)", "sft")}
    pair = Pair((("dpo", CHAINED), ("sft", "sft_d0")))
    step = source.diff("sft_d0", CHAINED).total.l2
    sft = source.diff("base", "sft_d0").total.l2
    from_base = source.diff("base", CHAINED).total.l2
    assert l2_ratio(source, pair, **params) == pytest.approx(step / sft)
    assert step / sft != pytest.approx(from_base / sft, rel=1e-3)  # the two readings differ
