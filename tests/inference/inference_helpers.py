"""Helpers of the inference tests."""

from __future__ import annotations


def set_head(model, tok, mode: str) -> None:
    """Shape the LM head so that greedy decoding provably never / always stops.

    ``never``: stop rows zeroed and one ±w row pair, so some non-stop logit is ≥ 0 = every stop
    logit. ``always``: every row zero except <|eot|> = w and </s> = -w, so a stop token wins.
    """
    import torch

    w = model.lm_head.weight
    eot, eos = tok.convert_tokens_to_ids("<|eot|>"), tok.eos_token_id
    with torch.no_grad():
        if mode == "never":
            for i in (eot, eos):
                w[i] = 0
            a = tok.convert_tokens_to_ids(tok.tokenize("あ"))[0]
            b = tok.convert_tokens_to_ids(tok.tokenize("い"))[0]
            w[b] = -w[a]
        elif mode == "always":
            v = torch.randn(w.shape[1])
            w.zero_()
            w[eot], w[eos] = v, -v
        else:
            raise ValueError(mode)
