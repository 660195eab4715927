"""Where a training step's kernel launches come from: top-level aten ops per SFT step (steps 2-3 of 3) of the
smollm2 plan's recipe on a model folder, split into forward (with trl's loss and metrics), backward and the
optimizer, and the .item() calls among them. Session 4 (docs/performance.md) ran it on the CPU:

    python .ci/step-opcount.py ~/.cache/harness/gguf-folders/SmolLM2-135M-Instruct.Q4_1-*/
"""
import collections
import json
import sys
from dataclasses import replace

import torch
import transformers
from transformers import AutoTokenizer, TrainerCallback

from harness import data
from harness.train.plan import load_plan
from harness.train.sft import train_sft

RESULT: dict = {}
_train = transformers.Trainer.train


def _stage(event) -> str:
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith("Optimizer.step"):
            return "optimizer"
        if "backward" in p.name.lower():
            return "backward"
        p = p.cpu_parent
    return "forward"


def _profiled_train(self, *a, **k):
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    class Window(TrainerCallback):  # steps 2 and 3: the first carries the warm-up
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                prof.__exit__(None, None, None)

    self.add_callback(Window())
    out = _train(self, *a, **k)
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    RESULT["top_level_aten_ops_per_step"] = len(top) / 2
    RESULT["by_stage_per_step"] = {s: n / 2 for s, n in collections.Counter(map(_stage, top)).items()}
    RESULT["item_calls_per_step"] = {s: n / 2 for s, n in
                                     collections.Counter(_stage(e) for e in top if e.name == "aten::item").items()}
    RESULT["most_common"] = collections.Counter(e.name for e in top).most_common(8)
    return out


if __name__ == "__main__":
    base = sys.argv[1]
    plan = load_plan("fixtures/plans/smollm2.toml")
    transformers.Trainer.train = _profiled_train
    train_sft(base, AutoTokenizer.from_pretrained(base), data.sft_records("d1")[:16],
              replace(plan.sft, max_steps=3, logging_steps=10), "/tmp/step-opcount", "cpu", lora=plan.lora,
              quantize_4bit=False, seed=0, progress=False)
    print(json.dumps(RESULT, indent=1))
