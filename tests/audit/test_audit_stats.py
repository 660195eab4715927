"""The audit's whole-dataset statistics on a real tokenizer (the zoo's Qwen2.5-Instruct): the share of tokens
trained, rows cut inside the reply against rows cut in the prompt, and rows whose stop token is trained.
Each expected number is computed here from the chat template alone (the prompt rendered with a generation
prompt, the full conversation, max_length), not from the audit's labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.audit import audit

ROOT = Path(__file__).resolve().parents[2]
ZOO = next((z for z in (ROOT.parent / "shared" / "tokenizers", Path("/work/shared/tokenizers")) if z.is_dir()), None)

PROMPTS = ["Hi.", "What is two plus two?", "Name a colour. " + "Please be brief about it. " * 12]
REPLIES = ["Hello.", "Four. " * 15, "Blue."]
ML = 60  # cuts row 1 inside its reply; row 2's prompt alone (with Qwen's default system prompt) fills it


@pytest.fixture(scope="module")
def tok():
    if ZOO is None or not (ZOO / "qwen2.5-instruct").is_dir():
        pytest.skip("the tokenizer zoo's qwen2.5-instruct is not here (tests/../shared/tokenizers, /work/shared/tokenizers)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ZOO / "qwen2.5-instruct")


def _records():
    return [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
            for p, r in zip(PROMPTS, REPLIES)]


def _lengths(tok, rec) -> tuple[int, int, int]:
    """(prompt tokens with the generation prompt, all tokens, position of the reply's <|im_end|>)."""
    prompt = tok.apply_chat_template(rec["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
    full = tok.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=True, return_dict=True)
    p, f = len(prompt["input_ids"]), list(full["input_ids"])
    return p, len(f), f.index(tok.convert_tokens_to_ids("<|im_end|>"), p)


def test_trl_sft_statistics(tok):
    recs = _records()
    lengths = [_lengths(tok, r) for r in recs]
    kept = [(p, f, e) for p, f, e in lengths if p < ML]  # trl drops a row whose prompt alone fills max_length
    assert len(kept) == 2 and lengths[1][0] < ML < lengths[1][1], lengths  # the data does what the test says
    (st,) = audit(tok, data=recs, pipeline="trl-sft", max_length=ML).stats
    tokens = sum(min(f, ML) for p, f, e in kept)
    trained = sum(min(f, ML) - p for p, f, e in kept)  # completion-only loss: the reply, its end and newline
    assert (st.tokens, st.tokens_trained) == (tokens, trained)
    assert st.trained_share == pytest.approx(trained / tokens)
    assert (st.truncated, st.truncated_in_reply, st.truncated_in_prompt, st.dropped) == (1, 1, 0, 1)
    assert st.stop_trained == sum(1 for p, f, e in kept if e < ML) == 1
    d = audit(tok, data=recs, pipeline="trl-sft", max_length=ML).to_dict()["stats"][0]
    assert (d["tokens"], d["tokens_trained"], d["trained_share"]) == (tokens, trained, round(trained / tokens, 4))
    assert (d["truncated_in_reply"], d["truncated_in_prompt"], d["stop_trained"]) == (1, 0, 1)


def test_a_row_cut_in_its_prompt_is_told_from_one_cut_in_its_reply(tok):
    """hf-clm trains the prompt too, so a row whose prompt fills max_length stays: cut in the prompt."""
    recs = _records()
    lengths = [_lengths(tok, r) for r in recs]
    (st,) = audit(tok, data=recs, pipeline="hf-clm", max_length=ML).stats
    assert (st.truncated_in_reply, st.truncated_in_prompt, st.dropped) == (1, 1, 0)
    assert st.tokens == sum(min(f, ML) for p, f, e in lengths)
    # every token but the pad-masked ones: Qwen's pad <|endoftext|> is not in these sequences
    assert st.tokens_trained == st.tokens and st.trained_share == 1.0
    assert st.stop_trained == sum(1 for p, f, e in lengths if e < ML) == 1


def test_a_template_that_writes_no_end_of_turn_trains_no_stop(tok):
    """The assistant turn rendered without <|im_end|>: trl appends nothing of its own to a conversational
    completion, so no row trains a stop token, while the share of trained tokens stays what it was less
    those ends."""
    import copy

    broken = copy.deepcopy(tok)
    broken.chat_template = tok.chat_template.replace(
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
        "{%- if message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' + message.content }}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
        "{%- endif %}")
    assert broken.chat_template != tok.chat_template
    recs = _records()[:2]
    (st,) = audit(broken, data=recs, pipeline="trl-sft").stats
    assert st.stop_trained == 0 and st.truncated == 0
    (ok,) = audit(tok, data=recs, pipeline="trl-sft").stats
    assert ok.stop_trained == 2
    assert ok.tokens_trained - st.tokens_trained == 2 * 2  # each reply's <|im_end|> and newline


def test_the_view_prints_them(tok):
    from harness.audit.view import stats_lines

    report = audit(tok, data=_records(), pipeline="trl-sft", max_length=ML)
    (st,) = report.stats
    (line,) = [str(t) for t in stats_lines(report)]
    assert (f"tokens trained {st.tokens_trained} of {st.tokens} ({st.trained_share:.1%}); truncated 1 (1 inside "
            "the reply, 0 in the prompt); dropped 1; stop token trained in 1 of 2") in line


def test_a_stop_token_masked_as_padding_is_not_counted_trained(tok):
    """Study 004's bug on this vocabulary: pad set to the end-of-turn, and hf-clm's collator masks every pad id,
    so the <|im_end|> that ends each reply is in the sequence but has no label."""
    import copy

    padded = copy.deepcopy(tok)
    padded.pad_token = "<|im_end|>"
    recs = _records()[:2]
    (st,) = audit(padded, data=recs, pipeline="hf-clm").stats
    assert st.stop_trained == 0 and st.tokens_trained < st.tokens
    (ok,) = audit(tok, data=recs, pipeline="hf-clm").stats
    assert ok.stop_trained == 2 and ok.tokens == st.tokens
