"""Recipe sections: a TOML table set on a section is type-checked key by key and validated, each error
naming the field; plan tables are read-only and travel to worker processes."""

from __future__ import annotations

import pickle

import pytest

from harness.train import plan as plan_module
from harness.train.recipe import FrozenDict, LoraSpec, PlanError, Recipe, TinySpec, apply_table, freeze


def test_a_table_sets_typed_fields_and_leaves_the_section_unchanged():
    rec = Recipe()
    new = apply_table(rec, {"learning_rate": 1, "max_steps": 5, "lr_scheduler": "linear"}, "p.toml: sft")
    assert (new.learning_rate, new.max_steps, new.lr_scheduler) == (1.0, 5, "linear")
    assert isinstance(new.learning_rate, float) and rec == Recipe()  # an int where a float goes; frozen original
    lora = apply_table(LoraSpec(), {"target_modules": ["q_proj", "v_proj"]}, "p.toml: lora")
    assert lora.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize("obj, table, match", [
    (Recipe(), {"learning_rat": 1e-4}, r"^p\.toml: s: unknown field 'learning_rat'; known: .*learning_rate"),
    (Recipe(), {"max_steps": 1.5}, r"^p\.toml: s\.max_steps: must be an integer, got 1\.5"),
    (Recipe(), {"max_steps": True}, r"^p\.toml: s\.max_steps: must be an integer, got True"),
    (Recipe(), {"precompute_ref_log_probs": 1}, r"s\.precompute_ref_log_probs: must be true or false"),
    (Recipe(), {"lr_scheduler": "cosin"}, r"s\.lr_scheduler: unknown 'cosin'; known: cosine, linear"),
    (Recipe(), {"gpus": 3}, r"s\.gpus: must be at least 1 and divide batch_size \(2\)"),
    (Recipe(), {"max_steps": -2}, r"s\.max_steps: must be -1 \(use epochs\), 0 or more"),
    (Recipe(), {"batch_size": 0}, r"s\.batch_size: must be at least 1, got 0"),
    (LoraSpec(), {"dropout": 1.0}, r"s\.dropout: must lie in \[0, 1\)"),
    (LoraSpec(), {"target_modules": 3}, r"s\.target_modules: must be a string or a list of strings"),
    (TinySpec(), {"hidden_size": 30}, r"s\.hidden_size: 30 is not divisible by num_attention_heads"),
    (TinySpec(), {"dtype": "int8"}, r"s\.dtype: must be float32, bfloat16 or float16"),
    (TinySpec(), {"pretrain_seq_len": 0}, r"s\.pretrain_seq_len: must be positive, got 0"),
])
def test_bad_tables_name_the_field(obj, table, match):
    with pytest.raises(PlanError, match=match):
        apply_table(obj, table, "p.toml: s")


def test_plan_tables_are_read_only_and_pickle():
    d = freeze({"a": {"b": 1}})
    assert isinstance(d["a"], FrozenDict)
    with pytest.raises(TypeError, match="read-only"):
        d["a"]["b"] = 2  # type: ignore[index]
    back = pickle.loads(pickle.dumps(d))
    assert back == {"a": {"b": 1}} and isinstance(back, FrozenDict)


def test_the_plan_module_still_exports_the_sections():
    """``from harness.train.plan import Recipe`` (and the rest) keeps working after the split."""
    for name in ("BaseSource", "LoraSpec", "PlanError", "Recipe", "TinySpec", "load_plan", "plan_from_dict"):
        assert hasattr(plan_module, name), name
    assert plan_module.Recipe is Recipe and plan_module.PlanError is PlanError
