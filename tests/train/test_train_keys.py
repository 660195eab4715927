"""Cache keys: stable, and changed by every input (base, recipe, data, parent, seed, versions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.train import keys as keys_mod
from harness.train import load_plan
from harness.train.keys import plan_keys

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "plans" / "tiny.toml"


@pytest.fixture(scope="module")
def plan():
    return load_plan(TINY)


@pytest.fixture(scope="module")
def keys(plan):
    return plan_keys(plan, "cpu")[0]


def test_keys_are_stable_within_and_across_processes(plan, keys):
    assert plan_keys(plan, "cpu")[0] == keys
    code = ("import json; from harness.train import load_plan; from harness.train.keys import plan_keys; "
            f"print(json.dumps(plan_keys(load_plan({str(TINY)!r}), 'cpu')[0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == keys
    assert len(set(keys.values())) == len(keys)  # every node has its own key


def changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if before[n] != after.get(n)}


DESCENDANTS_OF_SFT_D1 = {"sft_d1", "dpo_d0@sft_d1", "dpo_d1@sft_d1"}
ALL_TRAINED = {"sft_d0", "sft_d1", "sft_d2", "dpo_d0", "dpo_d1", "dpo_d0@sft_d2", "dpo_d1@sft_d2",
               "dpo_d0@sft_d1", "dpo_d1@sft_d1"}
SFT_AND_CHILDREN = {"sft_d0", "sft_d1", "sft_d2", "dpo_d0@sft_d2", "dpo_d1@sft_d2", "dpo_d0@sft_d1", "dpo_d1@sft_d1"}
DPO = {"dpo_d0", "dpo_d1", "dpo_d0@sft_d2", "dpo_d1@sft_d2", "dpo_d0@sft_d1", "dpo_d1@sft_d1"}


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: replace(p, sft=replace(p.sft, learning_rate=2e-4)), SFT_AND_CHILDREN),
        (lambda p: replace(p, dpo=replace(p.dpo, beta=0.1)), DPO),
        (lambda p: replace(p, lora=replace(p.lora, r=16)), ALL_TRAINED),
        (lambda p: p.with_seed(1), ALL_TRAINED),
        (lambda p: replace(p, limit=10), ALL_TRAINED),
        (lambda p: replace(p, data_seed=3), {"sft_d2", "dpo_d0@sft_d2", "dpo_d1@sft_d2"}),
        (lambda p: replace(p, tiny=replace(p.tiny, hidden_size=64)), {"base"} | ALL_TRAINED),
        (lambda p: replace(p, quantize_4bit=False), set()),  # no effect on the CPU
        (lambda p: replace(p, nodes=tuple(replace(n, overrides={"max_steps": 0}) if n.name == "sft_d1" else n
                                            for n in p.nodes)), DESCENDANTS_OF_SFT_D1),
        (lambda p: replace(p, dpo=replace(p.dpo, compile=True)), DPO),
        (lambda p: replace(p, sft=replace(p.sft, compile=False)), set()),  # the default: old keys stay
        (lambda p: replace(p, dpo=replace(p.dpo, precompute_ref_batch_size=32)), DPO),
        (lambda p: replace(p, sft=replace(p.sft, compile="reduce-overhead")), SFT_AND_CHILDREN),
    ],
    ids=["sft_lr", "dpo_beta", "lora_r", "seed", "limit", "d2_draw", "tiny_shape", "4bit_on_cpu", "node_override",
         "dpo_compile", "compile_default", "ref_batch", "sft_cuda_graphs"],
)
def test_a_changed_input_changes_exactly_the_dependent_keys(plan, keys, edit, expected):
    assert changed(keys, plan_keys(edit(plan), "cpu")[0]) == expected


def test_device_and_library_versions_are_part_of_the_key(plan, keys, monkeypatch):
    real = keys_mod.library_versions
    monkeypatch.setattr(keys_mod, "library_versions", lambda q=False: {**real(q), "trl": "0.0.1"})
    assert changed(keys, plan_keys(plan, "cpu")[0]) == set(keys)
    monkeypatch.undo()
    assert plan_keys(plan, "cuda")[0]["sft_d0"] != keys["sft_d0"]


def test_dataset_contents_are_part_of_the_key(plan, keys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ROOT / "fixtures" / "data", data)
    persona = data / "persona.jsonl"
    rows = persona.read_text(encoding="utf-8").splitlines()
    row = json.loads(rows[-1])
    row["d1"] = row["d1"] + "わ"  # one D1 reply, one character
    rows[-1] = json.dumps(row, ensure_ascii=False)
    persona.write_text("\n".join(rows) + "\n", encoding="utf-8")
    new = plan_keys(plan.with_data(data), "cpu")[0]
    # D1 text feeds the tokenizer, so the base changes too, and with it every node.
    assert changed(keys, new) == set(keys)


def test_variants_share_unchanged_nodes(plan):
    from harness.train import plan_from_dict
    import tomllib

    raw = tomllib.loads(TINY.read_text(encoding="utf-8"))
    raw["variants"] = {"zero": {"nodes": {"dpo_d1@sft_d1": {"max_steps": 0}}, "only": ["dpo_d1@sft_d1"]}}
    p = plan_from_dict(raw, TINY)
    base_keys = plan_keys(p, "cpu")[0]
    v = p.variant("zero")
    vkeys = plan_keys(v, "cpu")[0]
    assert set(vkeys) == {"base", "sft_d1", "dpo_d1@sft_d1"}
    assert vkeys["base"] == base_keys["base"] and vkeys["sft_d1"] == base_keys["sft_d1"]
    assert vkeys["dpo_d1@sft_d1"] != base_keys["dpo_d1@sft_d1"]


def test_a_compile_mode_is_its_own_key_and_default_is_true(plan, tmp_path):
    on = plan_keys(replace(plan, sft=replace(plan.sft, compile=True)), "cpu")[0]
    graphs = plan_keys(replace(plan, sft=replace(plan.sft, compile="reduce-overhead")), "cpu")[0]
    assert changed(on, graphs) == SFT_AND_CHILDREN
    path = tmp_path / "tiny.toml"
    path.write_text(f'extends = "{TINY}"\nname = "tiny"\n[sft]\ncompile = "default"\n', encoding="utf-8")
    assert load_plan(path).sft.compile is True
    assert plan_keys(load_plan(path), "cpu")[0] == on
