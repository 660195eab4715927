"""Why the tiny plan's sft_d0 stops on 0.88 of prompts on CUDA (0.97 on the CPU): the same node trained on
CUDA under QLoRA (the plan: nf4 base, bf16 compute) and as bf16-autocast LoRA on the unquantized fp32 base,
two training seeds each; C6's statistic on the same held-out prompts with the same budget.
Run on a GPU machine: python .ci/tiny-c6-precision.py (fixtures under $HARNESS_FIXTURES_DIR or /tmp/fx-tiny)."""

import os
import time
from pathlib import Path

from harness.findings.eos import node_source
from harness.train import build, load_plan

PLANS = Path(__file__).resolve().parents[1] / "fixtures" / "plans"
exp = PLANS / "_tiny_no4bit.toml"
exp.write_text((PLANS / "tiny.toml").read_text(encoding="utf-8")
               + '\n[variants.no4bit]\nquantize_4bit = false\nonly = ["sft_d0"]\n', encoding="utf-8")
fx = os.environ.get("HARNESS_FIXTURES_DIR", "/tmp/fx-tiny")
plan = load_plan(exp)
for seed in (0, 1):
    for label, p in (("qlora", plan), ("lora-no4bit", plan.variant("no4bit"))):
        p = p.with_seed(seed) if seed != p.seed else p
        t0 = time.monotonic()
        g = build(p, only="sft_d0", fixtures_dir=fx, device="cuda", progress=False, jobs=1)
        src = node_source(g, "sft_d0", device="cuda")
        rate = sum(src.stopped) / len(src.stopped)
        print(f"seed {seed} {label:12s} stop rate {rate:.3f} ({sum(src.stopped)}/{len(src.stopped)}), "
              f"hit max {src.meta['hit_max']}, {time.monotonic() - t0:.0f} s", flush=True)
exp.unlink()
