"""C6's negative controls: the 004 setups, trained through trl on the CPU, under which "EOS is learned"
must return "fail". (The weight claims' negative controls are recipe overrides in their specs, run by the
claims runner on any plan: claims/test_claims.py, cases ``...-control:NAME``; tests/findings/test_findings_controls.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.findings import evaluate, load_specs, STATISTICS
from harness.findings.spec import Pair

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "fixtures" / "plans" / "tiny.toml"
SPECS = {s.id: s for s in load_specs(ROOT / "fixtures" / "claims", STATISTICS)}


@pytest.fixture(scope="module")
def tiny_plan():
    from harness.train import load_plan

    return load_plan(PLAN)


def rows_for(spec_id: str, source, pair: Pair):
    return {r.check: r for r in evaluate(SPECS[spec_id], source, pair, plan="tiny")}


# ---- C6: the 004 setups, trained through trl --------------------------------------------------
# The tiny plan's base was pretrained with EOS after every text, so it stops after any reply on its
# own and hides a missing EOS label (measured: 100% stop rate after SFT with no EOS label). A base
# that never saw EOS cannot learn it through LoRA either (0% with EOS labelled: LoRA does not train
# lm_head). The base here knows EOS, but only after questions, never after a reply: whether it stops
# after a reply is then up to the SFT labels, as for the 004 models.

NO_EOS_TEMPLATE = (  # the ELYZA case: the assistant turn is not closed by EOS, so no label is EOS
    "{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}<|system|>{{ m['content'] }}\n"
    "{%- elif m['role'] == 'user' -%}<|user|>{{ m['content'] }}\n"
    "{%- else -%}<|assistant|>{{ m['content'] }}\n{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


class _NewlineEnds:
    """The tokenizer as ``pretrain`` sees it, with "\n" in the place of EOS between texts."""

    def __init__(self, tok):
        self.tok, self.bos_token_id = tok, tok.bos_token_id
        self.eos_token_id = tok("\n", add_special_tokens=False)["input_ids"][-1]

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)


@pytest.fixture(scope="module")
def raw_base(tiny_plan, tmp_path_factory):
    """A small Llama for the tiny tokenizer that saw EOS after questions only."""
    from transformers import AutoTokenizer

    from harness import data
    from harness.train import build
    from harness.train.tiny import make_tiny_model, pretrain

    graph = build(tiny_plan, only="base", device="cpu", progress=False)
    tok = AutoTokenizer.from_pretrained(str(graph.path("base")))
    items = data.load_persona()
    texts = [i.prompt + tok.eos_token for i in items] + [e.prompt + tok.eos_token for e in data.load_eval_prompts()]
    texts += [i.d0 for i in items] + [f"{i.prompt}\n{i.d0}" for i in items]
    model = make_tiny_model(tok, hidden_size=64, intermediate_size=128, num_hidden_layers=4, seed=0)
    pretrain(model, _NewlineEnds(tok), texts, max_steps=200, min_steps=200, batch_size=8,
             seq_len=64, learning_rate=3e-3, device="cpu", progress=False)
    out = tmp_path_factory.mktemp("raw_base")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def c6_source(model_dir: Path, tokenizer):
    """Greedy generations on 24 held-out prompts, and P(stop | reply) on the first 24 trained D1 replies
    rendered with ``tokenizer`` (the setup's template and tokenization)."""
    from harness import data
    from harness.findings.eos import generations
    from harness.inference.stopprob import stop_probs
    from harness.inference.generate import load_model

    source = generations(model_dir, data.eval_records()[:24], tokenizer=tokenizer, device="cpu")
    source.stop_probe = lambda limit: stop_probs(load_model(model_dir, "cpu")[0], tokenizer,
                                                 data.sft_records("d1")[:min(limit, 24)])
    return source


def c6_rows(model_dir: Path, tokenizer, base: Path):
    source = c6_source(model_dir, tokenizer)
    source.base_source = c6_source(base, tokenizer)
    return rows_for("C6", source, Pair((("setup", model_dir.name),))), source


def train(tiny_plan, base: Path, tokenizer, out: Path) -> Path:
    from dataclasses import replace

    from harness import data
    from harness.train.sft import train_sft

    recipe = replace(tiny_plan.sft, max_steps=100, batch_size=4, learning_rate=1e-3)
    return train_sft(base, tokenizer, data.sft_records("d1"), recipe, out, "cpu", lora=tiny_plan.lora,
                     quantize_4bit=False, seed=0, progress=False)


@pytest.mark.shared_cache  # raw_base takes the tiny base's tokenizer from the project's fixture cache (built once)
@pytest.mark.parametrize("setup", ["eos_trained", "no_eos_in_labels", "eos_as_text_pieces"])
def test_c6_fails_for_the_004_setups(setup, tiny_plan, raw_base, tmp_path):
    from transformers import AutoTokenizer

    kwargs = {"split_special_tokens": True} if setup == "eos_as_text_pieces" else {}
    tok = AutoTokenizer.from_pretrained(str(raw_base), **kwargs)
    if setup == "no_eos_in_labels":
        tok.chat_template = NO_EOS_TEMPLATE
    if setup == "eos_as_text_pieces":  # the japanese-stablelm case: "</s>" is tokenized as text pieces
        assert tok("</s>", add_special_tokens=False)["input_ids"] != [tok.eos_token_id]
    rows, source = c6_rows(train(tiny_plan, raw_base, tok, tmp_path / setup), tok, raw_base)
    # informational rows carry no verdict; the sampled stop rate is not measured on this hand-built source
    verdicts = {k: r.verdict for k, r in rows.items() if r.verdict not in ("info", "not measured")}
    said = [r.describe() for r in rows.values()] + source.notes
    assert {"P(stop | reply)", "P(stop | reply) gain", "EOS text rate"} <= set(verdicts), said
    if setup == "eos_trained":  # the positive control: the same base and training, with EOS labelled
        assert set(verdicts.values()) == {"pass"}, said
    else:  # the stop token was never trained after a reply: the verdict itself fails, not only decoding
        assert verdicts["P(stop | reply)"] == "fail", said
