"""SFT recipe (flat: setup → train → save) with trl ``SFTTrainer`` and a peft LoRA adapter.

On CUDA the start model is loaded in 4-bit (QLoRA: nf4, double quant, bf16 compute); on the
CPU it trains with plain LoRA. The adapter is merged into the start model in its own dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.train import common
from harness.train.recipe import LoraSpec, Recipe

IGNORE = -100


class StopLabelMasking:
    """A collator wrapper that sets the label of every stop token to -100 (ignored by the loss): study 004's bug,
    which a pad == EOS collator makes by masking EOS as padding; the recipe's ``mask_stop_labels`` control."""

    def __init__(self, collator: Any, stop_ids: Sequence[int]) -> None:
        self.collator, self.stop_ids = collator, [int(i) for i in stop_ids]

    def __call__(self, examples: Any) -> Any:
        import torch

        batch = self.collator(examples)
        labels = batch["labels"].clone()
        labels[torch.isin(batch["input_ids"], torch.tensor(self.stop_ids, device=labels.device))] = IGNORE
        batch["labels"] = labels
        return batch


def train_sft(model_dir: str | Path, tokenizer: Any, records: Sequence[dict], recipe: Recipe, out_dir: str | Path,
              device: str = "auto", *, lora: LoraSpec = LoraSpec(), quantize_4bit: bool = True, seed: int = 0,
              progress: bool = True, lean: bool = True) -> Path:
    """Train ``records`` (trl conversational prompt/completion) on ``model_dir`` and save into
    ``out_dir``: the merged checkpoint, ``adapter/`` and ``log.json``. Returns ``out_dir``."""
    def make_trainer(model: Any, kwargs: dict, dataset: Any) -> Any:
        trainer = sft_trainer(model, kwargs, dataset, tokenizer, lora)
        if recipe.mask_stop_labels:
            from harness.inference.generate import stop_token_ids

            trainer.data_collator = StopLabelMasking(trainer.data_collator, stop_token_ids(tokenizer, model))
        return trainer

    return common.run_recipe("sft", make_trainer, model_dir, tokenizer, records, recipe, out_dir, device,
                             lora=lora, quantize_4bit=quantize_4bit, seed=seed, progress=progress, lean=lean)


def sft_trainer(model: Any, kwargs: dict, dataset: Any, tokenizer: Any, lora: LoraSpec) -> Any:
    """The trl ``SFTTrainer`` the SFT recipe trains with: ``kwargs`` from :func:`common.trainer_kwargs`,
    completion-only loss, no packing, a LoRA adapter from ``lora``."""
    from trl import SFTConfig, SFTTrainer

    args = common.one_gpu(SFTConfig(**kwargs, completion_only_loss=True, packing=False))
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=common.lora_config(lora))
