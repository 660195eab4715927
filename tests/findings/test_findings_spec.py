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
statement = "something holds"
seed_table = "Table 1"
plans = ["tiny"]
negative_control = "v"
pairs = [{ a = "dpo_d0", b = "sft_d0" }]

[[check]]
statistic = "l2_ratio"
comparator = "<"
threshold = 0.5
seed_value = { "dpo_d0/sft_d0" = 0.04 }
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
    assert spec.checks[0].seed_for("dpo_d0/sft_d0") == 0.04
    assert spec.checks[0].kwargs() == {"den": ("base", "b"), "num": ("base", "a")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.id = "C9"  # type: ignore[misc]


@pytest.mark.parametrize("old,new,field", [
    ('statement = "something holds"\n', "", "'statement'"),
    ('comparator = "<"', 'comparator = "<<"', "check[0].comparator"),
    ('statistic = "l2_ratio"', 'statistic = "l3_ratio"', "check[0].statistic"),
    ("threshold = 0.5", 'threshold = "half"', "check[0].threshold"),
    ('reason = "because"\n', "", "check[0].reason"),
    ('plans = ["tiny"]', 'plans = "tiny"', "'plans'"),
    ('pairs = [{ a = "dpo_d0", b = "sft_d0" }]', "pairs = []", "'pairs'"),
    ('seed_table = "Table 1"', 'seed_table = "Table 1"\ncolour = "red"', "'colour'"),
    ("threshold = 0.5", "threshold = 0.5\ntolerance = -1", "check[0].tolerance"),
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
    with pytest.raises(LoadError, match="cx.toml: not valid TOML"):
        load_spec(write(tmp_path, GOOD + "\n[[check]\n"))
    write(tmp_path, GOOD, "a.toml")
    write(tmp_path, GOOD, "cx.toml")
    with pytest.raises(LoadError, match="duplicate claim id 'CX'"):
        load_specs(tmp_path, STATISTICS)


def test_known_deviations_per_plan_and_pair(tmp_path):
    text = GOOD + '\n[known_deviations]\ntiny = { reason = "small base", pairs = ["dpo_d0/sft_d0"] }\nseed = "bf16"\n'
    spec = load_spec(write(tmp_path, text), STATISTICS)
    assert spec.known_deviation("tiny", "dpo_d0/sft_d0") == "small base"
    assert spec.known_deviation("tiny", "other") is None
    assert spec.known_deviation("seed", "other") == "bf16" and spec.known_deviation("micro") is None
    with pytest.raises(LoadError, match="known_deviations.tiny"):
        load_spec(write(tmp_path, GOOD + '\n[known_deviations]\ntiny = ""\n'), STATISTICS)
