"""Generation on tiny real Llama models: stop tokens, hit-max, left-padded batching, the chat template."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference_helpers import set_head
from harness import data
from harness.errors import HarnessError
from harness.inference.generate import generate, render_prompts, stop_token_ids, summary

MSGS = data.eval_records()[:6]


@pytest.fixture
def model_tok(chat_model_dir):
    return AutoModelForCausalLM.from_pretrained(chat_model_dir).eval(), AutoTokenizer.from_pretrained(chat_model_dir)


def test_stop_tokens_are_eos_config_and_end_of_turn(model_tok):
    model, tok = model_tok
    eot = tok.convert_tokens_to_ids("<|eot|>")
    assert stop_token_ids(tok, model) == [tok.eos_token_id, eot]
    model.generation_config.eos_token_id = [tok.eos_token_id, 42]
    assert stop_token_ids(tok, model) == [tok.eos_token_id, 42, eot]


def test_never_stopping_model_hits_max(model_tok):
    model, tok = model_tok
    set_head(model, tok, "never")
    gens = generate(model, MSGS, tokenizer=tok, max_new_tokens=7, batch_size=4, progress=False)
    assert len(gens) == len(MSGS)
    assert all(g.hit_max and not g.stopped and len(g.token_ids) == 7 for g in gens)
    assert summary(gens)["hit_max_rate"] == 1.0


def test_always_stopping_model_stops_at_once(model_tok):
    model, tok = model_tok
    set_head(model, tok, "always")
    gens = generate(model, MSGS, tokenizer=tok, max_new_tokens=7, batch_size=4, progress=False)
    stops = set(stop_token_ids(tok, model))
    assert all(g.stopped and not g.hit_max and g.text == "" and len(g.token_ids) == 1 and g.token_ids[0] in stops
               for g in gens)


def test_generation_config_eos_ids_stop_too(model_tok):
    """A model whose only winners are two plain tokens stops only when the config names them."""
    import torch

    model, tok = model_tok
    x, y = tok.convert_tokens_to_ids(tok.tokenize("あ"))[0], tok.convert_tokens_to_ids(tok.tokenize("い"))[0]
    with torch.no_grad():
        v = torch.randn(model.lm_head.weight.shape[1])
        model.lm_head.weight.zero_()
        model.lm_head.weight[x], model.lm_head.weight[y] = v, -v
    assert all(g.hit_max for g in generate(model, MSGS[:2], tokenizer=tok, max_new_tokens=4, progress=False))
    model.generation_config.eos_token_id = [x, y]
    assert all(g.stopped for g in generate(model, MSGS[:2], tokenizer=tok, max_new_tokens=4, progress=False))


def test_batched_left_padding_matches_one_by_one(model_tok):
    model, tok = model_tok
    prompts = MSGS + [[{"role": "user", "content": "こんにちは"}]]  # lengths differ a lot
    one = generate(model, prompts, tokenizer=tok, max_new_tokens=8, batch_size=1, progress=False)
    many = generate(model, prompts, tokenizer=tok, max_new_tokens=8, batch_size=4, progress=False)
    assert [g.token_ids for g in one] == [g.token_ids for g in many]
    assert [g.prompt for g in many] == render_prompts(tok, prompts)  # input order kept


def test_loads_from_folder_and_uses_chat_template_with_system(chat_model_dir):
    gens = generate(chat_model_dir, ["今日は何の日？"], system="丁寧に答えて。", max_new_tokens=3, progress=False,
                    device="cpu")
    assert gens[0].prompt == "<s><|system|>丁寧に答えて。<|eot|><|user|>今日は何の日？<|eot|><|assistant|>"


def test_sampling_returns_n_per_prompt(model_tok):
    model, tok = model_tok
    gens = generate(model, MSGS[:3], tokenizer=tok, do_sample=True, num_return_sequences=4, seed=0,
                    max_new_tokens=5, progress=False)
    assert len(gens) == 12 and [g.prompt for g in gens[:4]] == [gens[0].prompt] * 4


def test_bad_input_errors(model_tok, tmp_path):
    model, tok = model_tok
    with pytest.raises(HarnessError, match="max_new_tokens"):
        generate(model, MSGS, tokenizer=tok, max_new_tokens=0)
    with pytest.raises(HarnessError, match="without its tokenizer"):
        generate(model, MSGS)
    with pytest.raises(HarnessError, match="prompt 1: expected a string or a list of chat messages"):
        generate(model, ["ok", 3], tokenizer=tok)
    tok.chat_template = None
    with pytest.raises(HarnessError, match="prompt 0: chat messages given but the tokenizer has no chat template"):
        generate(model, MSGS, tokenizer=tok)
    with pytest.raises(HarnessError, match=str(tmp_path)):
        generate(tmp_path, ["x"])
