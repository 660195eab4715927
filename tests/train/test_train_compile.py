"""The ``compile`` recipe option: the step runs through torch.compile with every batch padded to
``max_length``, and trains the same losses as the eager step (CPU, the micro plan's base)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness import data
from harness.train import build, load_plan
from harness.train.common import LOG_FILE, SUMMARY_FILE
from harness.train.sft import train_sft

MICRO = Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "micro.toml"


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory) -> Path:
    plan = load_plan(MICRO)
    return build(plan, fixtures_dir=tmp_path_factory.mktemp("fx"), device="cpu", only="base", progress=False).path("base")


def _train(base: Path, out: Path, compile: bool | str) -> tuple[dict, list[float]]:
    plan = load_plan(MICRO)
    # a large learning rate so the later steps' losses depend on the earlier updates; no LoRA dropout, whose
    # random masks depend on the (padded) shape
    recipe = replace(plan.sft, max_steps=4, learning_rate=5e-2, logging_steps=1, compile=compile)
    train_sft(base, AutoTokenizer.from_pretrained(base), data.sft_records("d0")[:8], recipe, out, "cpu",
              lora=replace(plan.lora, dropout=0.0), quantize_4bit=False, seed=0, progress=False)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    return summary, [row["loss"] for row in json.loads((out / LOG_FILE).read_text())]


@pytest.fixture(scope="module")
def eager_run(micro_base, tmp_path_factory) -> tuple[dict, list[float]]:
    return _train(micro_base, tmp_path_factory.mktemp("eager"), False)


# True: torch's default mode; "reduce-overhead" reaches the trainer as its compile mode (on the CPU torch
# replays no CUDA graphs, so the step is the default mode's)
@pytest.mark.parametrize("mode", [True, "reduce-overhead"], ids=["default", "reduce-overhead"])
def test_compiled_step_trains_the_eager_losses(micro_base, eager_run, tmp_path, mode):
    assert "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION" not in os.environ
    eager, eager_losses = eager_run
    compiled, compiled_losses = _train(micro_base, tmp_path / "compiled", mode)
    # regional compilation is asked for only while the compiled trainer is built
    assert "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION" not in os.environ
    assert eager["compiled"] is False and compiled["compiled"] is True
    assert eager["compile_mode"] is None
    assert compiled["compile_mode"] == (None if mode is True else mode)
    assert len(eager_losses) == len(compiled_losses) == 4
    assert eager_losses[-1] != eager_losses[0]  # the updates move the loss, so agreement below means something
    # padded to max_length and fused differently: float32 rounding, grown by the large learning rate over the
    # steps (measured: 3e-3 at step 4), against 8-30 % moves of the loss from one step to the next
    assert compiled_losses[0] == pytest.approx(eager_losses[0], rel=1e-5)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-2)
    for s in (eager, compiled):
        assert s["first_step_s"] > 0 and s["median_step_s"] > 0


def test_cuda_graph_steps_marks_each_step_for_the_graph_trees():
    # Without the mark, the H200 run of compile = "reduce-overhead" stopped in its first steps: "accessing
    # tensor output of CUDAGraphs that has been overwritten by a subsequent run" (the compiled decoder layer
    # replays 30 times a step); with it the step trains (docs/performance.md, session 5).
    import torch
    from torch._inductor import cudagraph_trees
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from harness.train.common import CUDA_GRAPH_MODES, cuda_graph_steps

    assert "reduce-overhead" in CUDA_GRAPH_MODES and "default" not in CUDA_GRAPH_MODES
    before = cudagraph_trees.MarkStepBox.mark_step_counter
    callback = cuda_graph_steps()
    for _ in range(3):
        callback.on_step_begin(TrainingArguments(output_dir="unused", report_to="none"), TrainerState(),
                               TrainerControl())
    assert cudagraph_trees.MarkStepBox.mark_step_counter == before - 3
    assert torch.compiler.cudagraph_mark_step_begin is not None


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_step_trains_the_eager_losses_on_cuda(micro_base, tmp_path):
    plan = load_plan(MICRO)
    runs = {}
    for mode in (False, "reduce-overhead"):
        out = tmp_path / str(mode)
        recipe = replace(plan.sft, max_steps=6, learning_rate=5e-2, logging_steps=1, compile=mode)
        train_sft(micro_base, AutoTokenizer.from_pretrained(micro_base), data.sft_records("d0")[:12], recipe, out,
                  "cuda", lora=replace(plan.lora, dropout=0.0), quantize_4bit=False, seed=0, progress=False)
        runs[mode] = (json.loads((out / SUMMARY_FILE).read_text()),
                      [row["loss"] for row in json.loads((out / LOG_FILE).read_text())])
    (eager, eager_losses), (graphs, graph_losses) = runs[False], runs["reduce-overhead"]
    assert graphs["compile_mode"] == "reduce-overhead" and graphs["steps"] == 6
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)  # bf16 autocast on CUDA
