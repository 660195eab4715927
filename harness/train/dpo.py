"""DPO recipe (flat: setup → train → save) with trl ``DPOTrainer`` and a peft LoRA adapter.

The reference model is the start model itself: with a peft model and no ``ref_model``, trl
scores the reference with the adapter disabled. On CUDA the start model is 4-bit (QLoRA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.train import common
from harness.train.recipe import LoraSpec, Recipe


def train_dpo(model_dir: str | Path, tokenizer: Any, records: Sequence[dict], recipe: Recipe, out_dir: str | Path,
              device: str = "auto", *, lora: LoraSpec = LoraSpec(), quantize_4bit: bool = True, seed: int = 0,
              progress: bool = True, lean: bool = True) -> Path:
    """Train preference ``records`` (prompt/chosen/rejected) on ``model_dir`` and save into
    ``out_dir``: the merged checkpoint, ``adapter/`` and ``log.json``. Returns ``out_dir``."""
    from trl import DPOConfig, DPOTrainer

    def make_trainer(model: Any, kwargs: dict, dataset: Any) -> Any:
        args = common.one_gpu(DPOConfig(**kwargs, beta=recipe.beta,
                                        precompute_ref_log_probs=recipe.precompute_ref_log_probs,
                                        precompute_ref_batch_size=recipe.precompute_ref_batch_size or None))
        return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=common.lora_config(lora))

    return common.run_recipe("dpo", make_trainer, model_dir, tokenizer, records, recipe, out_dir, device,
                             lora=lora, quantize_4bit=quantize_4bit, seed=seed, progress=progress, lean=lean)
