"""Negative controls are part of the claim: a spec's ``[[negative_control]]`` carries its recipe override, which
applies to any plan (tiny, micro, smollm2, gemma3, a swapped base). A plan's own ``[variants.NAME]`` of the
control's name replaces the override on that plan; a control with neither is an error, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError, LoadError
from harness.findings import load_spec, load_specs
from harness.findings.session import Case, FindingsSession, Options

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "fixtures" / "plans"
CLAIMS = ROOT / "fixtures" / "claims"

SPEC = '''id = "MY5"
kind = "weights"
statement = "DPO after SFT moves the model further from base."
reference_table = "none"
roles = ["m", "start"]
pairs = [{ m = "dpo_d1@sft_d0", start = "sft_d0" }]

[[check]]
label = "L2(M,base)/L2(start,base)"
statistic = "l2_ratio"
params = { num = ["base", "m"], den = ["base", "start"] }
comparator = ">"
threshold = 1.0
reason = "a DPO that takes no step gives exactly 1"

[[negative_control]]
variant = "zero_step"
expect = "fail"
about = "a DPO that takes no step"
override = { nodes."dpo_d1@sft_d0" = { max_steps = 0 }, only = ["dpo_d1@sft_d0"] }
'''


def session(plan: Path, claims: Path = CLAIMS, tmp: Path | None = None) -> FindingsSession:
    return FindingsSession(Options(root=ROOT, plan_path=plan, plan_given=True, claims_dir=claims,
                                   fixtures_dir=str(tmp) if tmp else None, device="cpu", run="controls"),
                           say=lambda m: None)


def fixtures(tmp_path: Path) -> Path:
    """The fixture cache the micro builds share (``HARNESS_FIXTURES_DIR`` when set)."""
    return Path(os.environ.get("HARNESS_FIXTURES_DIR") or tmp_path / "fx")


def control_cases(fs: FindingsSession) -> list[Case]:
    return [c for c in fs.cases() if c.control is not None]


# ---- the shipped controls on every shipped plan, resolved without building ---------------------------

@pytest.mark.parametrize("plan", ["tiny", "micro", "smollm2", "gemma3", "study"])
def test_every_shipped_control_applies_to_every_plan(plan):
    """No control skips for want of a plan variant: each either resolves to its override's plan or skips
    because the plan's graph lacks the pair's nodes (micro has no dpo_d0)."""
    fs = session(PLANS / f"{plan}.toml")
    cases = control_cases(fs)
    assert {c.control.variant for c in cases} >= {"c1_dpo_at_sft_lr", "c5_zero_step_dpo"}
    for case in cases:
        r = fs.resolve(case)
        assert r.skip is None or "has no node" in r.skip, (case.id, r.skip)
        if r.skip is None:
            assert r.plan.variant_name == case.control.variant and r.plans == (r.plan,)
            assert set(r.nodes) <= set(r.plan.names)
    by_variant = {c.control.variant: fs.resolve(c) for c in cases}
    if plan != "micro":  # the study's graph: both run, with the specs' recipes
        c1, c5 = by_variant["c1_dpo_at_sft_lr"].plan, by_variant["c5_zero_step_dpo"].plan
        assert (c1.dpo.learning_rate, c1.dpo.epochs, c1.names) == (1e-4, 3.0, ("base", "sft_d0", "dpo_d0"))
        assert c1.dpo.beta == fs.plan.dpo.beta  # the rest of the plan's own recipe stays
        assert c5.recipe("dpo_d1@sft_d1").max_steps == 0 and c5.names == ("base", "sft_d1", "dpo_d1@sft_d1")


def test_a_control_keeps_the_node_keys_of_the_variant_it_replaces():
    """The tiny controls were plan variants; as spec overrides they build the same nodes (same cache keys)."""
    from harness.train import load_plan
    from harness.train.keys import plan_keys

    fs = session(PLANS / "tiny.toml")
    plan = load_plan(PLANS / "tiny.toml")
    c1 = next(c for c in control_cases(fs) if c.control.variant == "c1_dpo_at_sft_lr")
    old = plan.with_variant("c1_dpo_at_sft_lr", {"dpo": {"learning_rate": 1e-4, "epochs": 3},
                                                 "only": ["dpo_d0", "sft_d0"]})
    new = fs.resolve(c1).plan
    assert plan_keys(new, "cpu")[0] == plan_keys(old, "cpu")[0]
    assert plan_keys(new, "cpu")[0]["sft_d0"] == plan_keys(plan, "cpu")[0]["sft_d0"]  # unchanged: shared
    assert plan_keys(new, "cpu")[0]["dpo_d0"] != plan_keys(plan, "cpu")[0]["dpo_d0"]


def test_a_control_applies_under_a_swapped_base(tmp_path):
    fs = FindingsSession(Options(root=ROOT, plan_path=PLANS / "tiny.toml", plan_given=True, claims_dir=CLAIMS,
                                 base=str(tmp_path), device="cpu", run="controls"), say=lambda m: None)
    for case in control_cases(fs):
        r = fs.resolve(case)
        assert r.skip is None and r.plan.base == str(tmp_path.resolve()), (case.id, r.skip)


# ---- a plan's own variant of the control's name ----------------------------------------------------

def test_a_plan_variant_of_the_same_name_replaces_the_specs_override(tmp_path):
    plan = tmp_path / "tiny.toml"
    plan.write_text(f'extends = "{PLANS / "tiny.toml"}"\nname = "tiny"\n\n[variants.c1_dpo_at_sft_lr]\n'
                    'dpo = { learning_rate = 5e-5 }\nonly = ["dpo_d0"]\n', encoding="utf-8")
    fs = session(plan)
    case = next(c for c in control_cases(fs) if c.control.variant == "c1_dpo_at_sft_lr")
    vplan = fs.resolve(case).plan
    assert vplan.dpo.learning_rate == 5e-5 and vplan.dpo.epochs == fs.plan.dpo.epochs  # not the spec's 1e-4, 3
    c5 = next(c for c in control_cases(fs) if c.control.variant == "c5_zero_step_dpo")
    assert fs.resolve(c5).plan.recipe("dpo_d1@sft_d1").max_steps == 0  # other controls: the spec's override


def test_a_control_with_neither_override_nor_plan_variant_is_an_error_naming_both_files(tmp_path):
    claims = tmp_path / "claims"
    claims.mkdir()
    spec = claims / "my5.toml"
    spec.write_text(SPEC.replace('override = { nodes."dpo_d1@sft_d0" = { max_steps = 0 }, only = ["dpo_d1@sft_d0"] }\n',
                                 ""), encoding="utf-8")
    fs = session(PLANS / "micro.toml", claims, fixtures(tmp_path))
    [case] = control_cases(fs)
    with pytest.raises(LoadError, match=r"my5\.toml: negative_control\[0\] \('zero_step'\) has no override, and "
                                        r".*micro\.toml has no \[variants\.zero_step\]"):
        fs.resolve(case)
    fs.plan_cases(fs.cases())  # the first case prepares (builds) although the control cannot resolve
    assert fs.prepare(Case(case.spec, case.pair)).skip is None
    with pytest.raises(LoadError, match="has no override"):  # the control's own case errors
        fs.prepare(case)


def test_an_override_naming_a_node_the_plan_lacks_is_an_error_naming_the_spec(tmp_path):
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "my5.toml").write_text(SPEC.replace('only = ["dpo_d1@sft_d0"]', 'only = ["dpo_d9"]'), encoding="utf-8")
    fs = session(PLANS / "micro.toml", claims)
    [case] = control_cases(fs)
    with pytest.raises(HarnessError, match=r"my5\.toml: negative_control\[0\]\.override\.only: unknown node 'dpo_d9'"
                                           r".*\(applied to .*micro\.toml\)"):
        fs.resolve(case)


# ---- the override is checked when the spec loads ---------------------------------------------------

@pytest.mark.parametrize("override,field", [
    ('{ sft = { mask_stop_labelz = true } }', r"negative_control\[0\]\.override\.sft: unknown field 'mask_stop_labelz'"),
    ('{ dpo = { learning_rate = "hot" } }', r"negative_control\[0\]\.override\.dpo\.learning_rate: must be a number"),
    ('{ lora = { r = 0 } }', r"negative_control\[0\]\.override\.lora: r and alpha must be positive"),
    ('{ nodes."dpo_d1@sft_d0" = { max_step = 0 } }', r"negative_control\[0\]\.override\.nodes\.'dpo_d1@sft_d0': unknown field 'max_step'"),
    ('{ nodes."dpo_d1@sft_d0" = 0 }', r"negative_control\[0\]\.override\.nodes\.'dpo_d1@sft_d0': must be a table"),
    ('{ only = "dpo_d1@sft_d0" }', r"negative_control\[0\]\.override\.only: must be a list of node names"),
    ('{ limit = 1.5 }', r"negative_control\[0\]\.override\.limit: must be an integer"),
    ('{ quantize_4bit = "no" }', r"negative_control\[0\]\.override\.quantize_4bit: must be true or false"),
    ('{ tiny = { dtype = "bfloat16" } }', r"negative_control\[0\]\.override: unknown field 'tiny'"),
    ('"dpo_lr_1e-4"', r"negative_control\[0\]\.override: must be a table"),
])
def test_a_bad_override_fails_at_spec_load_naming_file_and_field(tmp_path, override, field):
    path = tmp_path / "my5.toml"
    path.write_text(SPEC.replace('override = { nodes."dpo_d1@sft_d0" = { max_steps = 0 }, only = ["dpo_d1@sft_d0"] }',
                                 f"override = {override}"), encoding="utf-8")
    with pytest.raises(LoadError, match=rf"my5\.toml: {field}"):
        load_spec(path)


def test_two_specs_may_not_give_one_control_name_two_recipes(tmp_path):
    (tmp_path / "a.toml").write_text(SPEC, encoding="utf-8")
    (tmp_path / "b.toml").write_text(SPEC.replace('id = "MY5"', 'id = "MY6"').replace("max_steps = 0", "max_steps = 1"),
                                     encoding="utf-8")
    with pytest.raises(LoadError, match=r"b\.toml: negative_control\[0\]\.override: control 'zero_step' is also in "
                                        r".*a\.toml with another override"):
        load_specs(tmp_path)
    (tmp_path / "b.toml").write_text(SPEC.replace('id = "MY5"', 'id = "MY6"'), encoding="utf-8")
    assert len(load_specs(tmp_path)) == 2  # the same recipe under one name: one graph, shared


# ---- a control runs on the micro plan, which has no variant for it ----------------------------------

def test_a_spec_control_runs_on_the_micro_plan(tmp_path):
    """The claims suite on micro (no [variants.zero_step]): the control trains its zero-step node, its row
    says FAIL, and the case passes because the claim failed there."""
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "my5.toml").write_text(SPEC, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HARNESS_FINDINGS_DIR", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist", "-rs",
                        str(ROOT / "claims" / "test_claims.py"), "--rootdir", str(ROOT), "--fixtures-dir", str(fixtures(tmp_path)),
                        "--harness-device", "cpu", "--findings-dir", str(tmp_path / "out"),
                        "--harness-plan", str(PLANS / "micro.toml"), "--claims-dir", str(claims),
                        "--harness-run-id", "r", "-k", "control"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "1 passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:] + r.stderr
    rows = json.loads((tmp_path / "out" / "micro" / "r.json").read_text())["results"]
    [row] = rows
    assert row["pair"] == "dpo_d1@sft_d0/sft_d0 [zero_step]" and row["verdict"] == "fail"
    assert row["measured"] == pytest.approx(1.0, abs=1e-6)


def test_a_controls_node_trains_in_the_same_build_as_the_plans_nodes(tmp_path):
    """The claims suite on micro over two fake device slots: the zero-step control's node starts as soon as
    sft_d0 is built, beside the plan's own DPO node, not after the plan's graph (one scheduler over both
    graphs); the findings' timing says so; the control's row reads fail, as it expects."""
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "my5.toml").write_text(SPEC, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_DEVICES": "a,b"}
    env.pop("HARNESS_FINDINGS_DIR", None)
    env.pop("HARNESS_LEGACY_GRAPHS", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist",
                        str(ROOT / "claims" / "test_claims.py"), "--rootdir", str(ROOT),
                        "--fixtures-dir", str(tmp_path / "fx"), "--harness-device", "cpu",
                        "--findings-dir", str(tmp_path / "out"), "--harness-plan", str(PLANS / "micro.toml"),
                        "--claims-dir", str(claims), "--harness-run-id", "r"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    # the claim itself may fail on micro's few steps (a finding, not this test's subject); the control's case passes
    assert r.returncode in (0, 1) and ("1 passed" in r.stdout or "2 passed" in r.stdout), r.stdout[-3000:] + r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("fixtures micro")]
    def at(graph: str, what: str) -> int:
        return next(i for i, x in enumerate(lines) if x.startswith(f"fixtures {graph}: ") and what in x)

    starts = [at("micro seed 0", "building dpo_d1@sft_d0"), at("micro [variant zero_step] seed 0", "building dpo_d1")]
    ends = [at("micro seed 0", "dpo_d1@sft_d0 built in"), at("micro [variant zero_step] seed 0", "dpo_d1@sft_d0 built in")]
    assert max(starts) < min(ends), lines
    data = json.loads((tmp_path / "out" / "micro" / "r.json").read_text())
    builds = {b["graph"]: b for b in data["meta"]["timing"]["builds"]}
    assert builds["micro [variant zero_step] seed 0"]["built_with"] == ["micro seed 0"], builds
    assert [n["node"] for n in builds["micro [variant zero_step] seed 0"]["nodes"]] == ["dpo_d1@sft_d0"]
    rows = {row["pair"]: row for row in data["results"]}
    assert set(rows) == {"dpo_d1@sft_d0/sft_d0", "dpo_d1@sft_d0/sft_d0 [zero_step]"}
    assert rows["dpo_d1@sft_d0/sft_d0 [zero_step]"]["verdict"] == "fail"
