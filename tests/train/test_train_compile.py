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


def test_cuda_trainers_keep_tf32_off(tmp_path):
    """transformers turns TF32 on process-wide for a trainer built with torch_compile; the harness's trainer
    arguments turn it off on CUDA, so a compiled node leaves the process's fp32 matmuls as they were."""
    from harness.train.common import trainer_kwargs

    recipe = replace(load_plan(MICRO).sft, compile="reduce-overhead")
    assert trainer_kwargs(recipe, tmp_path, "cuda", 0, False, False)["tf32"] is False
    assert trainer_kwargs(recipe, tmp_path, "cpu", 0, False, False)["tf32"] is None


# ---------------------------------------------------------------------------- on CUDA: CUDA graphs vs eager
#
# On the H200 the bf16 run at learning rate 5e-2 (6 steps) put 3 of 6 graph-replayed losses more than 2 %
# off the eager ones (step 3: 5.532 vs 5.871). bf16 rounding on differently shaped work (compiled: padded to
# max_length), compounded by a large learning rate, or a training bug under CUDA graphs (a stale buffer, a
# skipped optimizer step)? The tests below tell them apart: in float32 at a small learning rate the per-step
# gradients and weight updates must agree closely (a bug shows at full size there); in bf16 the graph replay
# must train the losses of the same compiled step without graphs (the same kernels on the same shapes), so
# whatever remains against eager is compilation's numerics, not the graphs'.

CUDA_ONLY = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _record_steps(base: Path, out: Path, compile: bool | str, *, bf16: bool, lr: float, steps: int = 6) -> dict:
    """micro's base trained on CUDA (plain LoRA, no dropout) with the SFT recipe's trainer, recording each
    step's loss, the LoRA gradients the optimizer gets (after clipping) and the LoRA weights after it.
    ``bf16`` False: float32 throughout (the harness trains CUDA nodes under bf16 autocast)."""
    import torch
    from transformers import TrainerCallback

    from harness.train import common
    from harness.train.sft import sft_trainer

    def trainable(model) -> list:
        return [p for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0].replace("_orig_mod.", ""))
                if p.requires_grad]

    def flat(tensors) -> "torch.Tensor":
        return torch.cat([t.detach().float().flatten() for t in tensors]).cpu()

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.grads, self.weights = None, [], []

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.start = flat(trainable(model))

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.grads.append(flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable(model)))

        def on_optimizer_step(self, args, state, control, model=None, **kw):
            self.weights.append(flat(trainable(model)))

    plan = load_plan(MICRO)
    out.mkdir(parents=True, exist_ok=True)
    recipe = replace(plan.sft, max_steps=steps, learning_rate=lr, logging_steps=1, compile=compile)
    kwargs = common.trainer_kwargs(recipe, out, "cuda", 0, False, False)
    kwargs["bf16"] = bf16
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = common.load_model(base, "cuda", False)
    with common.regional_compilation(bool(kwargs.get("torch_compile"))):
        trainer = sft_trainer(model, kwargs, common.training_dataset(data.sft_records("d0")[:12], out), tokenizer,
                              replace(plan.lora, dropout=0.0))
    if not bf16:  # float32 as IEEE float32: accelerate turns TF32 on (its legacy flag) for a compiled float32
        torch.backends.cuda.matmul.allow_tf32 = False  # trainer it sets up; the same flag turns it off
    recorder = Recorder()
    trainer.add_callback(recorder)
    if kwargs.get("torch_compile_mode") in common.CUDA_GRAPH_MODES:
        trainer.add_callback(common.cuda_graph_steps())
    trainer.train()
    return {"losses": [row["loss"] for row in common.train_log(trainer)], "start": recorder.start,
            "grads": recorder.grads, "weights": recorder.weights, "steps": trainer.state.global_step}


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@CUDA_ONLY
def test_cuda_graph_steps_get_the_eager_gradients_in_float32(micro_base, tmp_path, record_property):
    """float32, learning rate 1e-4: each step's gradients and the weights' update so far, under CUDA graphs
    against eager. What differs is only the summation order (the padded shapes, the fused kernels): the same
    comparison on the CPU (compile's default mode, 3 steps) measured 3e-7 for the gradients and 3e-6 for the
    updates, so 1e-3 leaves wide room for the GPU's kernels, while a skipped optimizer step (a sixth of the
    update and more) or a stale gradient or activation (a whole step's worth) lies far above it."""
    eager = _record_steps(micro_base, tmp_path / "eager", False, bf16=False, lr=1e-4)
    graphs = _record_steps(micro_base, tmp_path / "graphs", "reduce-overhead", bf16=False, lr=1e-4)
    for run in (eager, graphs):
        assert run["steps"] == len(run["grads"]) == len(run["weights"]) == 6
        moved = [run["start"], *run["weights"]]
        assert all(not a.equal(b) for a, b in zip(moved, moved[1:])), "a step left the weights as they were"
    assert graphs["start"].equal(eager["start"])  # the same initial adapter
    grad_diffs = [_rel(g, e) for g, e in zip(graphs["grads"], eager["grads"])]
    update_diffs = [_rel(g - graphs["start"], e - eager["start"]) for g, e in zip(graphs["weights"], eager["weights"])]
    record_property("grad_rel_diffs", grad_diffs)
    record_property("update_rel_diffs", update_diffs)
    print(f"float32 per-step relative differences, graphs vs eager: gradients {grad_diffs}, updates {update_diffs}")
    assert max(grad_diffs) < 1e-3, grad_diffs
    assert max(update_diffs) < 1e-3, update_diffs
    assert graphs["losses"] == pytest.approx(eager["losses"], rel=1e-4)


@CUDA_ONLY
def test_cuda_graphs_replay_the_eager_step_in_bf16(micro_base, tmp_path, record_property):
    """The harness's precision (bf16 autocast) at the failed run's learning rate 5e-2: the step replayed as
    CUDA graphs trains eager's losses. On one H200 they agreed to 7e-6 (relative) once TF32 stopped leaking
    from one compiled trainer into the next (trainer_kwargs: tf32=False); the 6 % gap of the old test was that
    leak. Default-mode compilation (no graphs) moved the losses by up to 5.8 % at this learning rate (other
    fused bf16 kernels, amplified by gradient norms up to 85); its fp32 gradients are checked tightly above, so
    here only its first loss, before any update, is held to eager's."""
    eager = _record_steps(micro_base, tmp_path / "eager", False, bf16=True, lr=5e-2)
    compiled = _record_steps(micro_base, tmp_path / "compiled", True, bf16=True, lr=5e-2)
    graphs = _record_steps(micro_base, tmp_path / "graphs", "reduce-overhead", bf16=True, lr=5e-2)
    diffs = {name: [abs(a - b) / abs(b) for a, b in zip(run["losses"], eager["losses"])]
             for name, run in (("compiled", compiled), ("graphs", graphs))}
    record_property("loss_rel_diffs_vs_eager", diffs)
    print(f"bf16 lr 5e-2 losses: eager {eager['losses']}, compiled {compiled['losses']}, graphs {graphs['losses']}")
    assert graphs["steps"] == compiled["steps"] == eager["steps"] == 6
    assert compiled["losses"][0] == pytest.approx(eager["losses"][0], rel=1e-2)
    assert graphs["losses"] == pytest.approx(eager["losses"], rel=1e-2)
    assert _rel(graphs["weights"][-1] - graphs["start"], eager["weights"][-1] - eager["start"]) < 5e-2
