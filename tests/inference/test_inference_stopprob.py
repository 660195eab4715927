"""Teacher-forced P(stop | reply) (harness.inference.stopprob) on a real tiny chat model: the batched float32
pass against a one-by-one float64 reference at the same positions, and the position is the one before the
first stop token of the reply as trl's SFT preparation tokenizes it."""

from __future__ import annotations

import pytest
import torch

from harness import data
from harness.inference.generate import stop_token_ids
from harness.inference.stopprob import cached_stop_probs, stop_positions, stop_probs

from inference_helpers import set_head


@pytest.fixture
def model_tok(chat_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(chat_model_dir).eval(), AutoTokenizer.from_pretrained(chat_model_dir)


def records(n: int = 6) -> list[dict]:
    return data.sft_records("d0")[:n]


def test_position_is_before_the_first_stop_token_of_the_reply(model_tok):
    model, tok = model_tok
    stops = stop_token_ids(tok, model)
    recs = records(3)
    ids, pos, skipped, unended = stop_positions(recs, tok, stops)
    assert skipped == unended == 0 and len(ids) == 3
    for r, x, p in zip(recs, ids, pos):
        assert x[p + 1] in stops and x[-1] == x[p + 1]
        reply = r["completion"][0]["content"]
        assert tok.decode(x[: p + 1]).rstrip().endswith(reply.strip()[-8:])  # the reply, then the stop token


def test_batched_float32_matches_float64_reference(model_tok):
    model, tok = model_tok
    recs = records(6)
    got = stop_probs(model, tok, recs, batch_size=4)  # two batches, right-padded
    stops = stop_token_ids(tok, model)
    ids, pos, _, _ = stop_positions(recs, tok, stops)
    ref = model.double()
    try:
        with torch.no_grad():
            want = [float(torch.softmax(ref(input_ids=torch.tensor([x])).logits[0, p], -1)[stops].sum())
                    for x, p in zip(ids, pos)]
    finally:
        model.float()
    assert got.n == 6
    assert got.probs == pytest.approx(want, abs=1e-5)
    assert got.mean == pytest.approx(sum(want) / 6, abs=1e-5)


def test_stop_head_makes_stop_the_argmax_and_a_never_head_does_not(model_tok):
    model, tok = model_tok
    set_head(model, tok, "always")
    hi = stop_probs(model, tok, records(4))
    assert hi.argmax_share == 1.0
    set_head(model, tok, "never")
    lo = stop_probs(model, tok, records(4))
    assert lo.argmax_share == 0.0 and lo.mean < hi.mean


def test_cached_by_model_key(chat_model_dir, tmp_path):
    a = cached_stop_probs(chat_model_dir, "k1", records(2), tmp_path, device="cpu", label="n")
    files = list((tmp_path / "stopprob").glob("n-*.json"))
    assert len(files) == 1
    assert cached_stop_probs(chat_model_dir, "k1", records(2), tmp_path, device="cpu", label="n") == a
    cached_stop_probs(chat_model_dir, "k2", records(2), tmp_path, device="cpu", label="n")
    assert len(list((tmp_path / "stopprob").glob("n-*.json"))) == 2


def test_a_turn_without_a_stop_token_is_read_after_its_last_token(model_tok):
    """A template that does not close the assistant turn with a stop token (study 004's ELYZA case)."""
    model, tok = model_tok
    tok.chat_template = tok.chat_template.replace("{{ eos_token }}", "").replace("<|eot|>", "")
    stops = stop_token_ids(tok, model)
    ids, pos, skipped, unended = stop_positions(records(3), tok, stops)
    assert unended == 3 and skipped == 0
    assert all(p == len(x) - 1 and not set(x[1:]) & set(stops) for x, p in zip(ids, pos))
    assert stop_probs(model, tok, records(3)).unended == 3
