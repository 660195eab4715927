"""ORPO recipe (flat: setup → train → save) with trl's ``ORPOTrainer`` and a peft LoRA adapter.

ORPO (odds-ratio preference optimisation) trains on preference records like DPO but with no reference
model: the SFT loss on the chosen reply plus ``beta`` (the paper's lambda) times the odds-ratio loss.
trl 1.x keeps it in ``trl.experimental.orpo``. Configured by the plan's ``[dpo]`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.errors import HarnessError
from harness.train import common
from harness.train.recipe import LoraSpec, Recipe


def train_orpo(model_dir: str | Path, tokenizer: Any, records: Sequence[dict], recipe: Recipe, out_dir: str | Path,
               device: str = "auto", *, lora: LoraSpec = LoraSpec(), quantize_4bit: bool = True, seed: int = 0,
               progress: bool = True, lean: bool = True) -> Path:
    """Train preference ``records`` (prompt/chosen/rejected) on ``model_dir`` with ORPO and save into
    ``out_dir``: the merged checkpoint, ``adapter/`` and ``log.json``. Returns ``out_dir``."""
    import warnings

    with warnings.catch_warnings():  # trl warns once that its experimental trainers may change
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    if recipe.compile:
        raise HarnessError("[dpo] compile: not supported by the orpo method (ORPOConfig has no fixed padding)")

    def make_trainer(model: Any, kwargs: dict, dataset: Any) -> Any:
        args = common.one_gpu(ORPOConfig(**kwargs, beta=recipe.beta))
        return ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           peft_config=common.lora_config(lora))

    return common.run_recipe("orpo", make_trainer, model_dir, tokenizer, records, recipe, out_dir, device,
                             lora=lora, quantize_4bit=quantize_4bit, seed=seed, progress=progress, lean=lean)
