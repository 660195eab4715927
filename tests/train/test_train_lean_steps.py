"""The lean training loop (``harness.train.common.lean_steps``) takes per-step CPU work out of the Trainer's
loop and changes no number: on the micro plan (CPU, LoRA dropout on, a fixed seed) SFT and DPO trained with it
and with the Trainer's own loop (``HARNESS_LEGACY_STEPS=1``) save bit-identical adapters and the same log.
Its speed is measured by ``tests/benchmarks/test_bench_claims_phases.py``, not asserted here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from harness.config import from_env
from harness.train import build, common, load_plan
from harness.train.dpo import train_dpo
from harness.train.keys import node_records, plan_keys
from harness.train.sft import train_sft

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    plan = load_plan(MICRO)
    graph = build(plan, fixtures_dir=tmp_path_factory.mktemp("fx"), device="cpu", only=["sft_d0"], progress=False,
                  jobs=1)
    return plan, graph


def _train(train, plan, graph, node: str, parent: str, out: Path, lean: bool) -> tuple[dict, list, dict]:
    recipe = dataclasses.replace(plan.recipe(node), max_steps=4)
    train(graph.path(parent), common.load_tokenizer(graph.path(parent)), node_records(plan, node), recipe, out, "cpu",
          lora=plan.lora, quantize_4bit=False, seed=plan.seed, progress=False, lean=lean)
    log = json.loads((out / common.LOG_FILE).read_text())
    summary = json.loads((out / common.SUMMARY_FILE).read_text())
    return load_file(str(out / common.ADAPTER_DIR / "adapter_model.safetensors")), log, summary


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_lean_steps_train_the_same_bits(micro, tmp_path, method):
    plan, graph = micro
    train, node, parent = (train_sft, "sft_d0", "base") if method == "sft" else (train_dpo, "dpo_d1@sft_d0", "sft_d0")
    lean = _train(train, plan, graph, node, parent, tmp_path / "lean", True)
    legacy = _train(train, plan, graph, node, parent, tmp_path / "legacy", False)
    assert lean[2]["lean_steps"] is True and legacy[2]["lean_steps"] is False
    assert lean[0].keys() == legacy[0].keys() and lean[0]
    for name, tensor in lean[0].items():
        assert tensor.equal(legacy[0][name]), f"{method}: adapter tensor {name} differs under the lean loop"
    assert lean[1] == legacy[1]  # every logged number: loss, grad norm, learning rate, trl's metrics
    assert lean[2]["steps"] == legacy[2]["steps"] == 4


def test_lean_steps_do_the_trainer_s_work_once(micro, tmp_path):
    """The FLOP count is the Trainer's own figure; the parameter walk of the model happens once, not per call."""
    from trl import SFTConfig, SFTTrainer

    plan, graph = micro
    model = common.load_model(graph.path("base"), "cpu", False)
    kwargs = common.trainer_kwargs(plan.sft, tmp_path, "cpu", 0, False, False)
    assert kwargs["logging_nan_inf_filter"] is False
    trainer = SFTTrainer(model=model, args=SFTConfig(**kwargs, completion_only_loss=True, packing=False),
                         train_dataset=common.training_dataset(node_records(plan, "sft_d0"), tmp_path),
                         processing_class=common.load_tokenizer(graph.path("base")),
                         peft_config=common.lora_config(plan.lora))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    expected = type(trainer).floating_point_ops(trainer, batch)
    common.lean_steps(trainer)
    calls = []
    count = trainer.model.num_parameters
    trainer.model.num_parameters = lambda **kw: calls.append(kw) or count(**kw)
    assert [trainer.floating_point_ops(batch) for _ in range(3)] == [expected] * 3 and len(calls) == 1


def test_legacy_steps_come_from_the_environment_and_leave_keys_alone():
    plan = load_plan(MICRO)
    legacy = plan.configured(from_env({"HARNESS_LEGACY_STEPS": "1"}))
    assert plan.configured(from_env({})).lean_steps is True and legacy.lean_steps is False
    assert plan_keys(legacy, "cpu", {"kind": "x"})[0] == plan_keys(plan, "cpu", {"kind": "x"})[0]


def test_mfu_needs_a_known_peak():
    u = common.utilisation(tokens=1000, params=2_000_000, seconds=2.0, device="cpu")
    assert u["model_flops"] == 6 * 2_000_000 * 1000 and u["mfu"] is None and u["gpu_name"] is None
    assert dict(common.PEAK_BF16_FLOPS)["H200"] == 989e12
