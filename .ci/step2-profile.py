"""Session 6: where the second training step goes under compile mode "reduce-overhead" (CUDA graphs).

In every cold smollm2 build with variant cudagraphs, the step after the compiling first step took 15-16 s in
SFT nodes and 5-10 s in DPO nodes, then ~0.1 s. This trains one SFT node of that graph on the converted base
(12 steps, alone on the GPU) and prints cProfile's top functions for step 2, and its wall time per step.
Usage (device machine, after the staging of .ci/gpu-session6): python .ci/step2-profile.py BASE_DIR PLAN
"""

import cProfile
import io
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

from harness import data
from harness.train import common, load_plan
from harness.train.graph import _load_tokenizer
from harness.train.sft import train_sft

base, plan = Path(sys.argv[1]), load_plan(sys.argv[2])
make_timer = common.step_timer


def profiling_timer():
    timer = make_timer()
    prof, marks = cProfile.Profile(), []
    begin, end = timer.on_step_begin, timer.on_step_end

    def on_step_begin(args, state, control, **kw):
        marks.append(time.perf_counter())
        if state.global_step == 1:  # the second step
            prof.enable()
        return begin(args, state, control, **kw)

    def on_step_end(args, state, control, **kw):
        if state.global_step == 2:
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue(), flush=True)
        r = end(args, state, control, **kw)
        print(f"step {state.global_step}: {time.perf_counter() - marks[-1]:.3f} s", flush=True)
        return r

    timer.on_step_begin, timer.on_step_end = on_step_begin, on_step_end
    return timer


common.step_timer = profiling_timer
recipe = replace(plan.recipe("sft_d0"), max_steps=12)
out = Path("/tmp/step2-sft")
train_sft(base, _load_tokenizer(base), data.sft_records("d0"), recipe, out, "cuda", lora=plan.lora,
          quantize_4bit=plan.quantize_4bit, seed=plan.seed, progress=False)
print((out / common.SUMMARY_FILE).read_text())
