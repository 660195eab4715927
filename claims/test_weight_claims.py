"""Weight claims C1–C5 of the seed (000_a82ce13c1a91df98): one check per claim spec and node pair.

The specs are data (``fixtures/claims/c*.toml``); each check computes the spec's statistics over
the fixture graph's cached diffs, reports the rows to the findings and fails when any row fails,
or when the training seeds (``--harness-seeds``) disagree.
"""

from __future__ import annotations

from pathlib import Path

import dataclasses

import pytest

from harness.findings import assert_holds, evaluate
from harness.findings import session as fs

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
CASES = fs.cases(ROOT, fs.WEIGHT_CLAIMS)


@pytest.mark.parametrize("case", CASES, ids=[fs.case_id(c) for c in CASES])
def test_weight_claim(case, harness_plan, claim_sources, claim_result, request):
    spec, pair = case
    if not spec.runs_on(harness_plan.name):
        pytest.skip(f"{spec.id} is not specified for plan {harness_plan.name!r} (plans: {', '.join(spec.plans)})")
    known = fs.expect_known_deviation(request, spec, harness_plan.name, pair.label)
    rows = []
    for seed, source in claim_sources:
        rows += evaluate(spec, source, pair, plan=harness_plan.name, seed=seed)
    if known:
        rows = [dataclasses.replace(r, note=known) for r in rows]
    claim_result(rows)
    assert_holds(rows)
