"""``detect`` on hand-labelled sequences at two edges: a trained span ending on a special token that is
not a stop token (still ``eos-missing``), and a trained BOS at prompt position 0 (``prompt-trained``)."""

from __future__ import annotations

from audit_synth import bpe
from harness.audit.codes import detect, token_info

IGNORE = -100


def sequence(tok, reply_tail: list[int]):
    """(ids, prompt_len): BOS + a rendered user turn + the assistant header, then "hello world" + ``reply_tail``."""
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    reply = tok("hello world", add_special_tokens=False)["input_ids"]
    return p + reply + reply_tail, len(p)


def codes(hits) -> dict[str, list[int]]:
    return {h.code: list(h.positions) for h in hits}


def test_span_ending_on_a_special_non_stop_token_is_eos_missing():
    tok = bpe()
    info = token_info(tok)
    header = tok.convert_tokens_to_ids("<|header|>")
    assert header in info.special_ids and header not in info.stop_ids
    ids, n = sequence(tok, [header])
    labels = [IGNORE] * n + ids[n:]
    found = codes(detect(tok, info, ids, labels, n))
    assert "eos-missing" in found and found["eos-missing"] == [len(ids) - 1], found
    # the control: the same span closed by the stop token is clean
    ids, n = sequence(tok, [tok.convert_tokens_to_ids("<|im_end|>")])
    assert codes(detect(tok, info, ids, [IGNORE] * n + ids[n:], n)) == {}


def test_trained_bos_at_prompt_position_0_is_prompt_trained():
    tok = bpe()
    info = token_info(tok)
    ids, n = sequence(tok, [tok.convert_tokens_to_ids("<|im_end|>")])
    assert ids[0] == tok.bos_token_id
    labels = [ids[0]] + [IGNORE] * (n - 1) + ids[n:]
    found = codes(detect(tok, info, ids, labels, n))
    assert found.get("prompt-trained") == [0], found
