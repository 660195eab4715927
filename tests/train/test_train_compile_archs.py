"""``compile = "reduce-overhead"`` (CUDA graphs) on QLoRA over every architecture transformers' GGUF loader
reads and the tests can build at random (tests/train/arch_models.py).

On the CPU (real bitsandbytes 4-bit layers, which quantize on the CPU too): the harness's 4-bit preparation
leaves nothing for the training forward to mutate in place, the cause of the crash of Qwen2-shaped bases
under CUDA graphs ("accessing tensor output of CUDAGraphs that has been overwritten ... bias.data =
bias.data.to(x.dtype)"). On CUDA: each architecture trains a few QLoRA steps through the harness's SFT path
under CUDA graphs and eagerly, the same data and seed, and the losses agree.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from arch_models import ARCHITECTURES, save_random
from harness import data
from harness.train import build, common, load_plan
from harness.train.recipe import LoraSpec, Recipe
from harness.train.sft import train_sft

MICRO = Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "micro.toml"


def test_the_architectures_are_ones_the_gguf_loader_reads():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    assert set(ARCHITECTURES) <= set(GGUF_SUPPORTED_ARCHITECTURES), set(ARCHITECTURES) - set(GGUF_SUPPORTED_ARCHITECTURES)


def _load_4bit(folder: Path) -> torch.nn.Module:
    """``folder`` loaded in 4-bit as ``common.load_model`` loads it on CUDA, here on the CPU."""
    return AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=common.quantization_config(),
                                                dtype=torch.bfloat16, device_map={"": "cpu"})


def _params(model: torch.nn.Module) -> dict[str, tuple[torch.dtype, int]]:
    return {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()}


def _train_step(model: torch.nn.Module, backward: bool = True) -> None:
    """One training-mode forward (and backward) under bf16 autocast, as the trainer runs it."""
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    if backward:
        loss.backward()


def test_a_4bit_layer_replaces_a_bias_of_another_dtype_in_its_forward(tmp_path):
    """Why the preparation matters: after peft's k-bit preparation alone (biases upcast to float32), the
    forward of a biased 4-bit layer swaps its bias's storage for a bf16 copy (bitsandbytes' in-place cast)."""
    from bitsandbytes.nn import Linear4bit
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(_load_4bit(save_random("qwen2", tmp_path / "m", 128)),
                                            use_gradient_checkpointing=False)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, Linear4bit) and q.bias.dtype == torch.float32 and q.compute_dtype == torch.bfloat16
    before = _params(model)
    _train_step(model, backward=False)  # no LoRA yet: nothing to train
    after = _params(model)
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed and all(n.endswith("_proj.bias") for n in changed), changed
    assert q.bias.dtype == torch.bfloat16


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_prepared_4bit_model_mutates_no_parameter_in_its_training_forward(arch, tmp_path):
    """common.prepare_4bit (what load_model does for QLoRA) and the trainer's LoRA wrapping: every 4-bit
    layer's bias is in its compute dtype, and a training step (LoRA dropout on) leaves every parameter's
    dtype and storage as they were, so a step captured as CUDA graphs writes no parameter."""
    from bitsandbytes.nn import Linear4bit
    from peft import get_peft_model

    model = common.prepare_4bit(_load_4bit(save_random(arch, tmp_path / arch, 128)), "off")
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert layers, "no 4-bit layer: the model was not quantized"
    biased = [m for m in layers if m.bias is not None]
    assert bool(biased) == (arch == "qwen2")  # the architectures' own choice: only Qwen2 has biased projections
    assert all(m.bias.dtype == m.compute_dtype == torch.bfloat16 for m in biased)
    peft_model = get_peft_model(model, common.lora_config(LoraSpec(r=4, alpha=8, dropout=0.1)))
    before = _params(peft_model)
    _train_step(peft_model)
    assert _params(peft_model) == before
    assert any(p.grad is not None for n, p in peft_model.named_parameters() if "lora_" in n)


# ---------------------------------------------------------------------------- on CUDA

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> object:
    """The micro plan's tiny tokenizer (with its chat template): every random model below uses it."""
    plan = load_plan(MICRO)
    base = build(plan, fixtures_dir=tmp_path_factory.mktemp("fx"), device="cpu", only="base", progress=False).path("base")
    return AutoTokenizer.from_pretrained(base)


def _losses(folder: Path, tokenizer: object, out: Path, compile: bool | str, recipe: Recipe) -> tuple[dict, list[float]]:
    train_sft(folder, tokenizer, data.sft_records("d0")[:16], replace(recipe, compile=compile), out, "cuda",
              lora=LoraSpec(r=8, alpha=16, dropout=0.0), quantize_4bit=True, seed=0, progress=False)
    summary = json.loads((out / common.SUMMARY_FILE).read_text())
    return summary, [row["loss"] for row in json.loads((out / common.LOG_FILE).read_text())]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and bitsandbytes' 4-bit training need a CUDA GPU")
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_architecture_trains_the_eager_losses_under_cuda_graphs(arch, tokenizer, tmp_path, record_property):
    """QLoRA as the plans load it (nf4, double quant, bf16 compute; LoRA on every linear layer, without dropout,
    whose masks would follow the padded shapes), 6 steps of batch 2 at learning rate 1e-3, eager and under
    compile = "reduce-overhead", the same records and seed."""
    folder = save_random(arch, tmp_path / "model", len(tokenizer), tokenizer)
    recipe = Recipe(epochs=1, batch_size=2, learning_rate=1e-3, max_steps=6, max_length=128, logging_steps=1)
    eager, eager_losses = _losses(folder, tokenizer, tmp_path / "eager", False, recipe)
    graphs, graph_losses = _losses(folder, tokenizer, tmp_path / "graphs", "reduce-overhead", recipe)
    diffs = [abs(a - b) / abs(b) for a, b in zip(graph_losses, eager_losses)]
    record_property("max_rel_loss_diff", max(diffs))
    print(f"{arch}: eager {eager_losses}\n{arch}: graphs {graph_losses}\n{arch}: max relative difference {max(diffs):.2e}")
    assert graphs["compile_mode"] == "reduce-overhead" and graphs["steps"] == eager["steps"] == 6
    assert eager["quantize_4bit"] is True and graphs["quantize_4bit"] is True
    # The tolerance: bf16 autocast (8 mantissa bits, ~4e-3 relative per rounding) on differently shaped work
    # (the compiled step pads every batch to max_length, eager to the batch's longest record) through
    # differently fused kernels; at 1e-3 the loss moves little over 6 steps, so the rounding does not compound
    # into another trajectory as it did at 5e-2 (test_train_compile.py). What this catches is an architecture
    # whose graphs crash or train something else; a subtle CUDA-graph fault (a stale buffer, a skipped
    # step) is the business of test_train_compile.py's float32 gradient comparison.
    assert graph_losses[0] == pytest.approx(eager_losses[0], rel=1e-2)
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)
    adapters = [common.ADAPTER_DIR, "adapter_model.safetensors"]
    assert all((tmp_path / run).joinpath(*adapters).is_file() for run in ("eager", "graphs"))
