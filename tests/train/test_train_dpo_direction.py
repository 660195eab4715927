"""DPO trains toward the chosen reply: after a few real trl DPO steps on the tiny base, the merged
model's log-probability margin log p(chosen) - log p(rejected) on the dataset's own records has grown.

The margin is measured here against the records as ``harness.data`` builds them, not as trl logs
it, so a recipe that swapped chosen and rejected in what it hands the trainer turns this red.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def margin(model_dir: Path, tok, records) -> float:
    """Mean over records of log p(chosen | prompt) - log p(rejected | prompt) (summed over reply tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    total = 0.0
    for rec in records:
        prompt = tok.apply_chat_template(rec["prompt"], tokenize=False, add_generation_prompt=True)
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        side = []
        for key in ("chosen", "rejected"):
            ids = tok(tok.apply_chat_template(rec["prompt"] + rec[key], tokenize=False),
                      add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            side.append(logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum().item())
        total += side[0] - side[1]
    return total / len(records)


@pytest.mark.parametrize("dataset", ["d1"])
def test_dpo_raises_the_chosen_over_rejected_margin(dataset, tmp_path, pytestconfig):
    from transformers import AutoTokenizer

    from harness import data
    from harness.train import build, load_plan
    from harness.train.dpo import train_dpo

    plan = load_plan(ROOT / "fixtures" / "plans" / "tiny.toml")
    fixtures_dir = pytestconfig.getoption("harness_fixtures_dir")
    base = build(plan, fixtures_dir=fixtures_dir, only="base", device="cpu", progress=False).path("base")  # cached
    tok = AutoTokenizer.from_pretrained(str(base))
    records = data.dpo_records(dataset)[:4]
    recipe = replace(plan.dpo, max_steps=3, batch_size=2, learning_rate=5e-4, precompute_ref_log_probs=False)
    out = train_dpo(base, tok, records, recipe, tmp_path / "dpo", "cpu", lora=plan.lora, quantize_4bit=False,
                    progress=False)
    before, after = margin(base, tok, records), margin(out, tok, records)
    assert after > before + 1.0, f"DPO did not move toward chosen: margin {before:.3f} -> {after:.3f} nats"
