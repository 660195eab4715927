"""The tiny plan builds end to end on the CPU (into the default fixtures dir, which the claims
suite reuses), every node saves what it must, and a second build is a cache hit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import data
from harness.train import build, load_plan
from harness.train import node as node_mod

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "plans" / "tiny.toml"


@pytest.fixture(scope="module")
def graph(pytestconfig):
    return build(load_plan(TINY), fixtures_dir=pytestconfig.getoption("harness_fixtures_dir"), device="cpu",
                 progress=False)


def test_every_node_is_a_loadable_merged_checkpoint(graph):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in graph.names:
        path = graph.path(name)
        for f in ("model.safetensors", "config.json", "tokenizer.json", "meta.json", "curves.png"):
            assert (path / f).is_file(), f"{name}: {f}"
        if name != "base":
            assert (graph.adapter_path(name) / "adapter_model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(graph.path("dpo_d1@sft_d1")))
    tok = AutoTokenizer.from_pretrained(str(graph.path("dpo_d1@sft_d1")))
    assert model.config.num_hidden_layers == 8 and 1_000_000 < model.num_parameters() < 5_000_000
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_training_logs_and_metadata(graph):
    n = len(data.load_persona())
    steps = math.ceil(n / 2) * 3
    for name in ("sft_d0", "sft_d1", "sft_d2"):
        log = graph.log(name)
        assert len(log) == steps and all("loss" in r for r in log)
        assert log[-1]["loss"] < log[0]["loss"]
    for name in ("dpo_d0", "dpo_d1", "dpo_d0@sft_d2", "dpo_d1@sft_d2", "dpo_d0@sft_d1", "dpo_d1@sft_d1"):
        log = graph.log(name)
        assert len(log) == steps
        assert all("rewards/accuracies" in r and "rewards/margins" in r for r in log)
    for name in graph.names:
        meta = graph.meta(name)
        assert meta["key"] == graph.key(name) and meta["device"] == "cpu" and meta["wall_seconds"] > 0
        assert {"torch", "transformers", "trl", "peft"} <= set(meta["versions"])
        assert meta["data_hashes"]
    assert graph.meta("sft_d2")["data_hashes"]["d2"] == data.records_hash(data.sft_records("d2"))


def test_base_is_pretrained_until_its_held_out_loss_flattens(graph):
    log = graph.log("base")
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert log[-1]["stopped"] in ("flat", "max_steps")
    # log[0]["loss"] is the untrained model's (about ln(vocab)); text it never saw got likelier too
    assert min(evals) < 0.85 * log[0]["loss"]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    # stopped where the held-out loss no longer improved by 1 %, twice in a row
    assert log[-1]["stopped"] == "max_steps" or min(evals[-2:]) > 0.99 * min(evals[:-2])


def test_a_child_trains_on_its_parent_merged(graph):
    """merged(child) = merged(parent) + scale * B @ A for every LoRA pair, and nothing else moved."""
    child = load_file(str(graph.path("dpo_d0@sft_d1") / "model.safetensors"))
    parent = load_file(str(graph.path("sft_d1") / "model.safetensors"))
    base = load_file(str(graph.path("base") / "model.safetensors"))
    adapter = load_file(str(graph.adapter_path("dpo_d0@sft_d1") / "adapter_model.safetensors"))
    plan = graph.plan
    scale = plan.lora.alpha / plan.lora.r
    checked = 0
    for key, a in adapter.items():
        if "lora_A" not in key:
            continue
        b = adapter[key.replace("lora_A", "lora_B")]
        target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        delta = child[target].double() - parent[target].double()
        torch.testing.assert_close(delta, scale * (b.double() @ a.double()), rtol=1e-3, atol=1e-6)
        checked += 1
    assert checked == 7 * 8  # all-linear: q k v o gate up down, 8 layers
    assert torch.equal(child["model.embed_tokens.weight"], parent["model.embed_tokens.weight"])
    # the child is far nearer its parent than the base: DPO moved it a little
    def dist(x, y):
        return math.sqrt(sum(float(((x[k].double() - y[k].double()) ** 2).sum()) for k in x))
    assert dist(child, parent) < 0.5 * dist(child, base)


def test_second_build_is_a_cache_hit(graph, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a cached node was rebuilt")

    monkeypatch.setattr(node_mod, "build_node", boom)
    again = build(load_plan(TINY), fixtures_dir=graph.fixtures_dir, device="cpu", progress=False)
    assert [again.path(n) for n in again.names] == [graph.path(n) for n in graph.names]


def test_tokenizer_speaks_japanese_and_the_assistant_turn_ends_in_eos(graph):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(graph.path("base")))
    rec = data.sft_records("d1")[0]
    ids = tok.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=True, return_dict=False)
    ids = ids["input_ids"] if isinstance(ids, dict) else ids
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert tok.decode(ids[ids.index(tok.eos_token_id) - 3:ids.index(tok.eos_token_id)]) in rec["completion"][0]["content"]
    text = "ごきげんよう😀、鬱蒼とした森ですわ。 ASCII too"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc) == text  # byte-level: any text round-trips
    assert len(tok(rec["completion"][0]["content"], add_special_tokens=False)["input_ids"]) < len(
        rec["completion"][0]["content"])  # merges learned on the fixture text
