"""Training-side properties the findings rest on, on the micro plan (builds in seconds on the CPU):

- the training seed matters and is all that matters: the same seed gives bit-identical adapters and
  merged weights in two separate fixture folders, another seed gives other weights (``--harness-seeds N``
  would otherwise report N copies of one run that trivially agree);
- a DPO node chained after SFT trains against its parent as the reference model, not the base. trl's own
  first logged step shows it: LoRA starts at zero (B = 0), so the policy equals the reference and the
  implicit rewards are 0 and the loss ln 2, exactly when the reference is the parent. The same node
  trained with the base as an explicit reference logs rewards away from 0 (the test's own control).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.train import build, load_plan

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
CHAINED = "dpo_d1@sft_d0"


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out: dict = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def identical(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> dict:
    """sft_d0 under training seed 0 in two separate fixture folders, and under seed 1 next to the first."""
    plan = load_plan(MICRO)
    one, two = tmp_path_factory.mktemp("seed_a"), tmp_path_factory.mktemp("seed_b")
    out = {}
    for label, seed, folder in (("a0", 0, one), ("b0", 0, two), ("a1", 1, one)):
        g = build(plan.with_seed(seed), only="sft_d0", fixtures_dir=folder, device="cpu", progress=False)
        out[label] = {"merged": tensors(g.path("sft_d0")), "adapter": tensors(g.adapter_path("sft_d0")),
                      "base": tensors(g.path("base")), "key": g.key("sft_d0"), "path": g.path("sft_d0")}
    return out


def test_the_same_training_seed_gives_bit_identical_weights(seeded):
    a, b = seeded["a0"], seeded["b0"]
    assert a["path"] != b["path"] and a["key"] == b["key"]  # two builds, in two folders
    assert identical(a["base"], b["base"])
    assert identical(a["adapter"], b["adapter"]) and identical(a["merged"], b["merged"])


def test_another_training_seed_gives_other_weights(seeded):
    import torch

    a, c = seeded["a0"], seeded["a1"]
    assert identical(a["base"], c["base"]) and a["key"] != c["key"]  # one base; the seed is in the node key
    assert not identical(a["adapter"], c["adapter"]) and not identical(a["merged"], c["merged"])
    moved = [k for k in a["adapter"] if not torch.equal(a["adapter"][k], c["adapter"][k])]
    assert len(moved) == len(a["adapter"]), "every LoRA matrix depends on the seed (init and data order)"


def first_step(log: list[dict]) -> dict:
    entry = next(e for e in log if "rewards/chosen" in e)
    assert entry["step"] == 1, entry  # micro logs every step: the first logged step is the first step
    return entry


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    """``dpo_d1@sft_d0`` trained by the harness (in a fresh folder, so it trains here)."""
    return build(load_plan(MICRO), only=CHAINED, fixtures_dir=tmp_path_factory.mktemp("chained"), device="cpu",
                 progress=False)


def test_a_chained_dpo_node_is_scored_against_its_parent(chained):
    entry = first_step(chained.log(CHAINED))
    assert abs(entry["rewards/chosen"]) < 1e-4 and abs(entry["rewards/rejected"]) < 1e-4, entry
    assert abs(entry["rewards/margins"]) < 1e-4, entry
    assert entry["loss"] == pytest.approx(math.log(2), abs=1e-4), entry


def test_with_the_base_as_reference_the_first_step_is_not_at_zero(chained, tmp_path):
    """The control that gives the test above its teeth: the same node, the same recipe, data and seed, but
    trl given the base as ``ref_model``. Its first step's rewards are the parent's log-ratio to the base."""
    from trl import DPOConfig, DPOTrainer
    from transformers import AutoModelForCausalLM

    from harness.train import common
    from harness.train.keys import node_records

    plan = chained.plan
    parent = chained.path("sft_d0")
    tok = common.load_tokenizer(parent)
    recipe = plan.recipe(CHAINED)

    def make_trainer(model, kwargs, dataset):
        args = common.one_gpu(DPOConfig(**kwargs, beta=recipe.beta))
        ref = AutoModelForCausalLM.from_pretrained(str(chained.path("base")))
        return DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok,
                          peft_config=common.lora_config(plan.lora))

    common.run_recipe("dpo", make_trainer, parent, tok, node_records(plan, CHAINED), recipe, tmp_path / "out", "cpu",
                      lora=plan.lora, quantize_4bit=False, seed=plan.seed, progress=False)
    import json

    entry = first_step(json.loads((tmp_path / "out" / common.LOG_FILE).read_text()))
    assert abs(entry["rewards/chosen"]) > 1e-3 and abs(entry["rewards/margins"]) > 1e-3, entry
    assert abs(entry["loss"] - math.log(2)) > 1e-4, entry
