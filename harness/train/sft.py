"""SFT recipe (flat: setup → train → save) with trl ``SFTTrainer`` and a peft LoRA adapter.

On CUDA the start model is loaded in 4-bit (QLoRA: nf4, double quant, bf16 compute); on the
CPU it trains with plain LoRA. The adapter is merged into the start model in its own dtype.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from harness.train import common
from harness.train.plan import LoraSpec, Recipe


def train_sft(model_dir: str | Path, tokenizer: Any, records: Sequence[dict], recipe: Recipe, out_dir: str | Path,
              device: str = "auto", *, lora: LoraSpec = LoraSpec(), quantize_4bit: bool = True, seed: int = 0,
              progress: bool = True) -> Path:
    """Train ``records`` (trl conversational prompt/completion) on ``model_dir`` and save into
    ``out_dir``: the merged checkpoint, ``adapter/`` and ``log.json``. Returns ``out_dir``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = common.resolve_device(device)
    adapter_dir = out / common.ADAPTER_DIR
    t0 = time.perf_counter()
    log: list[dict] = []
    summary: dict = {"device": device, "quantize_4bit": common.uses_4bit(device, quantize_4bit), "steps": 0}
    if recipe.max_steps == 0:
        common.save_untrained_adapter(model_dir, lora, adapter_dir, device)
    else:
        # setup
        common.quiet_datasets(progress)
        model = common.load_model(model_dir, device, quantize_4bit)
        big = common.is_big(model)
        args = SFTConfig(**common.trainer_kwargs(recipe, out, device, seed, progress, big),
                         completion_only_loss=True, packing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(list(records)),
                             processing_class=tokenizer, peft_config=common.lora_config(lora))
        summary["records_used"] = common.check_records_used(trainer, len(records), recipe, "sft")
        if not progress:  # without the bar, the Trainer prints every log line instead
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        summary["setup_s"] = time.perf_counter() - t0
        # train
        common.reset_peak_memory(device)
        trainer.train()
        log = common.train_log(trainer)
        summary.update(common.train_summary(trainer, log, device))
        # save
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
        del trainer, model
    t1 = time.perf_counter()
    common.merge_and_save(model_dir, adapter_dir, tokenizer, out, device)
    summary["merge_save_s"] = time.perf_counter() - t1
    summary["total_s"] = time.perf_counter() - t0
    common.write_json(out / common.LOG_FILE, log)
    common.write_json(out / common.SUMMARY_FILE, summary)
    return out
