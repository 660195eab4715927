"""Claim specs: the shipped ones load; bad ones raise one error naming the file and the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.findings import STATISTICS, load_spec, load_specs

ROOT = Path(__file__).resolve().parents[2]

GOOD = '''
id = "CX"
kind = "weights"
statement = "something holds"
reference_table = "Table 1"
roles = ["a", "b"]
negative_control = "v"
pairs = [{ a = "dpo_d0", b = "sft_d0" }]

[[check]]
statistic = "l2_ratio"
comparator = "<"
threshold = 0.5
reference_value = { "dpo_d0/sft_d0" = 0.04 }
reason = "because"
params = { num = ["base", "a"], den = ["base", "b"] }
'''


def write(tmp_path: Path, text: str, name: str = "cx.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_shipped_specs_load_with_reasons():
    specs = load_specs(ROOT / "fixtures" / "claims", STATISTICS)
    assert {"C1", "C2", "C3", "C4", "C5", "C6"} <= {s.id for s in specs}
    for s in specs:
        assert s.negative_control and s.pairs and s.checks
        assert all(len(c.reason) > 40 for c in s.checks), s.id


def test_good_spec_is_frozen(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), STATISTICS)
    assert spec.checks[0].reference_for("dpo_d0/sft_d0") == 0.04
    assert spec.checks[0].kwargs() == {"den": ("base", "b"), "num": ("base", "a")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.id = "C9"  # type: ignore[misc]


@pytest.mark.parametrize("old,new,field", [
    ('statement = "something holds"\n', "", "'statement'"),
    ('comparator = "<"', 'comparator = "<<"', "check[0].comparator"),
    ('statistic = "l2_ratio"', 'statistic = "l3_ratio"', "check[0].statistic"),
    ("threshold = 0.5", 'threshold = "half"', "check[0].threshold"),
    ('reason = "because"\n', "", "check[0].reason"),
    ('roles = ["a", "b"]', 'roles = "a"', "'roles'"),
    ('pairs = [{ a = "dpo_d0", b = "sft_d0" }]', "pairs = []", "'pairs'"),
    ('reference_table = "Table 1"', 'reference_table = "Table 1"\ncolour = "red"', "'colour'"),
    ("threshold = 0.5", "threshold = 0.5\ntolerance = -1", "check[0].tolerance"),
    ("threshold = 0.5", "threshold = 0.5\nfloor = -0.1", "check[0].floor"),
    ('kind = "weights"', 'kind = "vibes"', "'kind'"),
    ('kind = "weights"', 'kind = "judge"', "check[0].statistic"),  # l2_ratio is a weights statistic
    ('{ a = "dpo_d0", b = "sft_d0" }', '{ a = "dpo_d0", c = "sft_d0" }', "pairs[0].c"),
    ('{ a = "dpo_d0", b = "sft_d0" }', '{ a = "dpo_d0" }', "pairs[0].b"),
    ('den = ["base", "b"]', 'den = ["base", "parent(z)"]', "check[0].params.den[1]"),
    ('{ "dpo_d0/sft_d0" = 0.04 }', '{ "dpo_d0/sft_d1" = 0.04 }', "check[0].reference_value.dpo_d0/sft_d1"),
    ('reference_value =', 'seed_value =', "check[0].seed_value"),
    ('reference_table = "Table 1"', 'seed_table = "Table 1"', "'seed_table'"),
    ('negative_control = "v"', 'negative_control = [{ variant = "v", expect = "pass" }]', "negative_control[0].expect"),
    ('negative_control = "v"', 'negative_control = [{ variant = "v", pairs = ["x/y"] }]', "negative_control[0].pairs"),
])
def test_bad_field_is_named(tmp_path, old, new, field):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(LoadError) as e:
        load_spec(path, STATISTICS)
    assert str(path) in str(e.value) and field in str(e.value)


def test_unknown_statistic_lists_known_names(tmp_path):
    with pytest.raises(LoadError, match="known: .*depth_spearman.*l2_ratio"):
        load_spec(write(tmp_path, GOOD.replace('"l2_ratio"', '"nope"')), STATISTICS)


def test_bad_toml_and_duplicate_ids(tmp_path):
    with pytest.raises(LoadError, match="cx.toml: invalid TOML"):
        load_spec(write(tmp_path, GOOD + "\n[[check]\n"))
    write(tmp_path, GOOD, "a.toml")
    write(tmp_path, GOOD, "cx.toml")
    with pytest.raises(LoadError, match="duplicate claim id 'CX'"):
        load_specs(tmp_path, STATISTICS)


DEVIATIONS = """
[[known_deviation]]
plan = "tiny"
base = "tiny"
pairs = ["dpo_d0/sft_d0"]
reason = "small base"

[[known_deviation]]
plan = "study"
base = "meta-llama/Llama-3.1-8B-Instruct"
reason = "bf16"
"""


def test_known_deviations_are_keyed_by_plan_base_and_pair(tmp_path):
    spec = load_spec(write(tmp_path, GOOD + DEVIATIONS), STATISTICS)
    assert spec.known_deviation("tiny", "tiny", "dpo_d0/sft_d0") == "small base"
    assert spec.known_deviation("tiny", "tiny", "other") is None
    # the same plan on another base: the tiny base's measured deviation does not carry over
    assert spec.known_deviation("tiny", "HuggingFaceTB/SmolLM2-135M", "dpo_d0/sft_d0") is None
    # another plan on the same base
    assert spec.known_deviation("tiny_wide", "tiny", "dpo_d0/sft_d0") is None
    assert spec.known_deviation("study", "meta-llama/Llama-3.1-8B-Instruct", "other") == "bf16"
    bad = GOOD + DEVIATIONS.replace('pairs = ["dpo_d0/sft_d0"]', 'pairs = ["dpo_d0/sft_d9"]')
    with pytest.raises(LoadError, match=r"known_deviation\[0\].pairs.*'dpo_d0/sft_d9' is no pair label"):
        load_spec(write(tmp_path, bad), STATISTICS)
    with pytest.raises(LoadError, match=r"known_deviation\[1\].base.*missing"):
        load_spec(write(tmp_path, GOOD + DEVIATIONS.replace('base = "meta-llama/Llama-3.1-8B-Instruct"\n', "")))
    with pytest.raises(LoadError, match="'known_deviations'.*renamed to 'known_deviation'"):
        load_spec(write(tmp_path, GOOD + '\n[known_deviations]\ntiny = "x"\n'), STATISTICS)


def test_negative_controls_are_data(tmp_path):
    text = GOOD.replace('negative_control = "v"\n', "") + (
        '\n[[negative_control]]\nvariant = "c1_dpo_at_sft_lr"\nexpect = "fail"\nabout = "gap closes"\n')
    spec = load_spec(write(tmp_path, text))
    [c] = spec.controls
    assert (c.variant, c.expect, c.covers("dpo_d0/sft_d0")) == ("c1_dpo_at_sft_lr", "fail", True)
    assert "gap closes" in spec.negative_control


def _tiny_base() -> str:
    from harness.findings.session import base_name
    from harness.train import load_plan

    plan = load_plan(ROOT / "fixtures" / "plans" / "tiny.toml")
    return base_name(plan.base, plan.tiny)


TINY = _tiny_base()  # the shipped tiny base's identity: tiny-<hash of its [tiny] table>


def test_a_wider_tiny_base_is_another_base():
    from dataclasses import replace

    from harness.findings.session import base_name
    from harness.train import load_plan

    plan = load_plan(ROOT / "fixtures" / "plans" / "tiny.toml")
    wide = replace(plan.tiny, hidden_size=256, intermediate_size=512)
    assert base_name("tiny", wide) != TINY and base_name("tiny", plan.tiny) == TINY
    specs = {s.id: s for s in load_specs(ROOT / "fixtures" / "claims")}
    assert specs["C3"].known_deviation("tiny", base_name("tiny", wide), None) is None


def test_shipped_specs_keep_every_measured_known_deviation():
    specs = {s.id: s for s in load_specs(ROOT / "fixtures" / "claims")}
    measured = {("C2", "sft_d0"): "-0.05 and -0.24", ("C3", None): "0.94", ("C4", None): "ratio 2.3",
                ("C7", "sft_d1/d1"): "-2.1e-06"}
    for (cid, pair), text in measured.items():
        assert text in specs[cid].known_deviation("tiny", TINY, pair), cid
    assert {c.variant for s in specs.values() for c in s.controls} == {"c1_dpo_at_sft_lr", "c5_zero_step_dpo", "c6_stop_label_masked"}


def test_a_known_deviation_can_be_keyed_by_device(tmp_path):
    """The tiny plan's C6 sft_d0 fails under QLoRA on CUDA (0.85-0.88) and holds on the CPU (0.97):
    a deviation measured on one device type must not excuse the other."""
    on_cuda = DEVIATIONS.replace('reason = "small base"', 'device = "cuda"\nreason = "4-bit on CUDA"')
    spec = load_spec(write(tmp_path, GOOD + on_cuda), STATISTICS)
    assert spec.known_deviation("tiny", "tiny", "dpo_d0/sft_d0", "cuda") == "4-bit on CUDA"
    assert spec.known_deviation("tiny", "tiny", "dpo_d0/sft_d0", "cpu") is None
    assert spec.known_deviation("study", "meta-llama/Llama-3.1-8B-Instruct", "other", "cpu") == "bf16"  # no device: all
    with pytest.raises(LoadError, match=r"known_deviation\[0\].device'.*one of cpu, cuda, got 'gpu'"):
        load_spec(write(tmp_path, GOOD + on_cuda.replace('"cuda"', '"gpu"')), STATISTICS)



# ---- the statistics registry -------------------------------------------------------------------

def test_a_statistic_name_registered_twice_is_an_error_naming_both_functions():
    """A second statistic under a taken name (even for another kind) is refused: it must not attach its kind
    to the first function."""
    from harness.errors import HarnessError
    from harness.findings.kinds import register_statistic

    def l2_ratio(source, pair):  # same name as the weights statistic
        return 0.0

    with STATISTICS.isolated():
        with pytest.raises(HarnessError) as err:
            register_statistic("generations", "l2_ratio", l2_ratio)
        msg = str(err.value)
        assert "statistic 'l2_ratio' is registered twice" in msg
        assert "harness.findings.statistics.l2_ratio" in msg
        assert "test_a_statistic_name_registered_twice_is_an_error_naming_both_functions.<locals>.l2_ratio" in msg
        assert STATISTICS.kinds["l2_ratio"] == "weights"
    assert STATISTICS.accepts("weights", "l2_ratio") and not STATISTICS.accepts("generations", "l2_ratio")


def test_an_isolated_statistic_is_gone_after_the_block(tmp_path):
    from harness.findings.kinds import statistic

    with STATISTICS.isolated():
        @statistic("weights", "always_one")
        def always_one(source, pair):
            return 1.0

        spec = load_spec(write(tmp_path, GOOD.replace('"l2_ratio"', '"always_one"')))
        assert spec.checks[0].statistic == "always_one"
    assert "always_one" not in STATISTICS and "always_one" not in STATISTICS.kinds
    with pytest.raises(LoadError, match="unknown statistic 'always_one'"):
        load_spec(write(tmp_path, GOOD.replace('"l2_ratio"', '"always_one"')))


def test_zoo_tokenizers_belong_to_a_generations_claim(tmp_path):
    with pytest.raises(LoadError, match=r"cx.toml.*zoo.*only a claim of kind 'generations'"):
        load_spec(write(tmp_path, GOOD.replace('kind = "weights"', 'kind = "weights"\nzoo = ["vicuna-1.5"]')))
