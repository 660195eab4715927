"""Seed 003's loop on SmolLM2 (fixtures/plans/smollm2-selfgen.toml): build the graph, then for each node
the selfgen counts and C6's statistic on the 100 held-out prompts at the plan's budget (the judge that
would score the safety/quality trade-off is not available offline: SmolLM2 cannot follow its rubric).
Run on a GPU machine: python .ci/selfgen-smollm2.py  (fixtures under $HARNESS_FIXTURES_DIR or /tmp/fx-sg)."""

import os
import statistics
import sys
import time
from pathlib import Path

from harness.evaluate.nodes import GenSettings, node_generations, prompts, reply_budget
from harness.train import build, load_plan

if __name__ == "__main__":  # build() spawns one worker per ready node on CUDA
    plan = load_plan(Path(__file__).resolve().parents[1] / "fixtures" / "plans" / "smollm2-selfgen.toml")
    if len(sys.argv) > 1:
        plan = plan.variant(sys.argv[1])
    fx = os.environ.get("HARNESS_FIXTURES_DIR", "/tmp/fx-sg")
    t0 = time.monotonic()
    graph = build(plan, fixtures_dir=fx, device="auto", progress=False)
    print(f"built {plan.name} in {time.monotonic() - t0:.0f} s", flush=True)
    from transformers import AutoTokenizer  # noqa: E402

    from harness import data  # noqa: E402

    # smollm2's C6 budget: the whole D1 (the graph trains on its first items)
    budget, longest = reply_budget(AutoTokenizer.from_pretrained(str(graph.path("base"))), data.sft_records("d1"))
    settings = GenSettings(max_new_tokens=budget)
    for node in graph.names[1:]:
        gens = node_generations(graph, node, prompts("eval"), settings, progress=False)
        lengths = [len(g.token_ids) for g in gens]
        meta = graph.meta(node).get("selfgen") or {}
        counts = {k: meta[k] for k in ("items", "kept", "dropped", "original_used") if k in meta}
        print(f"{node:24s} stop rate {sum(g.stopped for g in gens) / len(gens):.2f}  median reply {statistics.median(lengths):.0f} "
              f"tokens (budget {budget})  {counts}", flush=True)
