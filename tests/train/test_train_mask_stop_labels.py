"""The 004 negative control's training side: ``[sft] mask_stop_labels = true`` masks every stop token's label in
trl's real collated batches, enters the node key only when set, is recorded by the pre-flight (not refused),
and leaves the trained node's P(stop | reply) far below the same node trained without it (micro plan, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.train import build, load_plan
from harness.train.keys import node_records, plan_keys, recipe_key
from harness.train.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"


def test_only_a_set_mask_enters_the_recipe_key():
    assert "mask_stop_labels" not in recipe_key(Recipe())
    assert recipe_key(Recipe(mask_stop_labels=True))["mask_stop_labels"] is True


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    """The micro plan's base and sft_d0, trained long enough (30 epochs of its 8 records at lr 2e-3) that the stop
    token becomes the most likely token after each reply, and a variant that masks the stop labels."""
    text = MICRO.read_text().replace("[sft]\nepochs = 1", "[sft]\nepochs = 30\nlearning_rate = 2e-3")
    text += '\n[variants.masked]\nonly = ["sft_d0"]\nsft = { mask_stop_labels = true }\n'
    path = tmp_path_factory.mktemp("plan") / "micro_mask.toml"
    path.write_text(text)
    return path


def test_the_mask_is_a_new_key_only_for_the_masked_node(plan_file):
    plan = load_plan(plan_file)
    k0, _ = plan_keys(plan, "cpu", {"kind": "x"})
    k1, _ = plan_keys(plan.variant("masked"), "cpu", {"kind": "x"})
    assert k0["base"] == k1["base"] and k0["sft_d0"] != k1["sft_d0"]


def test_a_preference_node_refuses_the_mask(plan_file):
    from harness.errors import HarnessError

    text = plan_file.read_text().replace("[dpo]\nepochs = 1", "[dpo]\nepochs = 1\nmask_stop_labels = true")
    bad = plan_file.with_name("bad.toml")
    bad.write_text(text)
    with pytest.raises(HarnessError, match=r"bad\.toml: node 'dpo_d1@sft_d0': mask_stop_labels is an SFT control"):
        plan_keys(load_plan(bad), "cpu", {"kind": "x"})


def test_trl_collated_batch_trains_no_stop_label(plan_file, tmp_path):
    """On trl's real SFTTrainer and collator (as train_sft builds them): without the mask the stop tokens carry
    labels, with it none does, and every other label is unchanged."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from harness.inference.generate import stop_token_ids
    from harness.train import common
    from harness.train.sft import StopLabelMasking

    plan = load_plan(plan_file)
    graph = build(plan, fixtures_dir=tmp_path, device="cpu", only=["base"], progress=False, jobs=1)
    tok = AutoTokenizer.from_pretrained(graph.path("base"))
    model = common.load_model(graph.path("base"), "cpu", False)
    kwargs = common.trainer_kwargs(plan.sft, tmp_path, "cpu", 0, False, False)
    trainer = SFTTrainer(model=model, args=SFTConfig(**kwargs, completion_only_loss=True, packing=False),
                         train_dataset=common.training_dataset(node_records(plan, "sft_d0"), tmp_path),
                         processing_class=tok, peft_config=common.lora_config(plan.lora))
    stops = torch.tensor(stop_token_ids(tok, model))
    rows = [trainer.train_dataset[i] for i in range(4)]
    plain = trainer.data_collator(rows)
    masked = StopLabelMasking(trainer.data_collator, stops.tolist())(rows)
    is_stop = torch.isin(plain["input_ids"], stops)
    assert (plain["labels"][is_stop] != -100).any(), "trl trains the stop token's label"
    assert (masked["labels"][is_stop] == -100).all()
    assert torch.equal(masked["labels"][~is_stop], plain["labels"][~is_stop])


def test_masked_node_does_not_learn_to_stop(plan_file, tmp_path):
    from harness.evaluate.nodes import fixtures_dir
    from harness.inference.stopprob import cached_stop_probs
    from harness.train.preflight import MASKED_STOP_LABELS
    from harness.train.store import META_FILE

    import json

    plan = load_plan(plan_file)
    healthy = build(plan, fixtures_dir=tmp_path, device="cpu", only=["sft_d0"], progress=False, jobs=1)
    masked = build(plan.variant("masked"), fixtures_dir=tmp_path, device="cpu", progress=False, jobs=1)
    recs = node_records(plan, "sft_d0")

    def p_stop(graph, node):
        return cached_stop_probs(graph.path(node), str(graph.key(node)), recs, fixtures_dir(graph), device="cpu",
                                 label=node)

    base, good, bad = p_stop(healthy, "base"), p_stop(healthy, "sft_d0"), p_stop(masked, "sft_d0")
    # The micro base is too small to put much mass anywhere (entropy ~5 nats after training), so the learned stop
    # token shows as the argmax after every reply and a higher P(stop | reply) than the base's.
    print(f"P(stop | reply): base {base.describe()}; healthy {good.describe()}; masked {bad.describe()}")
    assert good.mean > base.mean and good.argmax_share >= 0.75, (base, good)
    assert bad.mean < min(good.mean, base.mean) and bad.argmax_share <= 0.25, (bad, good)
    pf = json.loads((Path(masked.path("sft_d0")) / META_FILE).read_text())["preflight"]
    assert MASKED_STOP_LABELS in [f["code"] for f in pf["findings"]] and pf["status"] != "error"
    pf_healthy = json.loads((Path(healthy.path("sft_d0")) / META_FILE).read_text())["preflight"]
    assert MASKED_STOP_LABELS not in [f["code"] for f in pf_healthy["findings"]]
