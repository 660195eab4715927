"""A training method added as data: ORPO (trl's ORPOTrainer) as a registry entry, trained on the micro plan's
orpo variant on the CPU (real trl, four steps), and the plan's method validation naming the registered ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.train import build, load_plan, methods
from harness.train.keys import plan_keys
from harness.train.plan import PlanError, plan_from_dict

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
NODE = "orpo_d1@sft_d0"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    plan = load_plan(MICRO).variant("orpo")
    return build(plan, fixtures_dir=tmp_path_factory.mktemp("fx"), device="cpu", progress=False)


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_the_orpo_node_trains_with_trls_orpo_loss_and_moves_its_parent(graph):
    import torch

    assert graph.trained == ["base", "sft_d0", NODE]
    meta = graph.meta(NODE)
    assert meta["method"] == "orpo" and meta["inputs"]["method"] == "orpo"
    assert meta["preflight"]["pipeline"] == "trl-dpo" and meta["preflight"]["status"] != "error"
    log = graph.log(NODE)
    assert len(log) == meta["train"]["steps"] == 4
    beta = load_plan(MICRO).dpo.beta  # ORPO's lambda comes from the [dpo] section
    for row in log:  # ORPO's loss: the chosen reply's NLL minus beta * log sigmoid(log odds ratio)
        assert math.isfinite(row["loss"]) and math.isfinite(row["nll_loss"])
        assert row["loss"] == pytest.approx(row["nll_loss"] - beta * row["log_odds_ratio"], rel=1e-3, abs=1e-4)
    child, parent = weights(graph.path(NODE)), weights(graph.path("sft_d0"))
    moved = sum(float((child[k].double() - parent[k].double()).abs().sum()) for k in child)
    assert moved > 0, "ORPO left the parent's weights as they were"
    assert (graph.path(NODE) / "adapter" / "adapter_config.json").is_file()


def test_orpo_has_its_own_key_and_leaves_the_other_keys_alone():
    plan = load_plan(MICRO)
    keys, inputs = plan_keys(plan, "cpu")
    assert keys[NODE] != keys["dpo_d1@sft_d0"]
    # the same data, parent, recipe section and seed as the DPO node: only the method tells them apart
    a, b = dict(inputs[NODE]), dict(inputs["dpo_d1@sft_d0"])
    assert a.pop("method") == "orpo" and b.pop("method") == "dpo" and a == b
    raw = _raw()
    raw["nodes"] = [n for n in raw["nodes"] if n["method"] != "orpo"]
    del raw["variants"]["orpo"]
    without = plan_from_dict(raw, MICRO)
    assert {n: k for n, k in keys.items() if n != NODE} == plan_keys(without, "cpu")[0]


def _raw() -> dict:
    import tomllib

    return tomllib.loads(MICRO.read_text(encoding="utf-8"))


def test_plans_accept_the_registered_methods_and_name_them_for_others():
    raw = _raw()
    raw["nodes"][1] = {**raw["nodes"][1], "method": "kto"}
    with pytest.raises(PlanError, match=r"nodes\[1\] \(sft_d0\)\.method: must be one of base, dpo, orpo, sft, "
                                        r"got 'kto'"):
        plan_from_dict(raw, MICRO)
    with pytest.raises(HarnessError, match=r"unknown training method 'kto'; known: base, dpo, orpo, sft"):
        methods.get("kto")
    assert load_plan(MICRO).recipe(NODE) == load_plan(MICRO).dpo


def test_a_method_without_ddp_refuses_several_gpus_before_training(tmp_path):
    from harness.train.distributed import with_gpus

    with pytest.raises(HarnessError, match=r"node 'orpo_d1@sft_d0': gpus = 2, but method 'orpo' does not train "
                                           r"over several GPUs"):
        build(with_gpus(load_plan(MICRO).variant("orpo"), 2), fixtures_dir=tmp_path, device="cpu", progress=False)
    assert not (tmp_path / "nodes").exists() or not any((tmp_path / "nodes").iterdir()), "nothing was trained"
