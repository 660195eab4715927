"""Fixtures shared by more than one test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_model_folder(tmp_path_factory) -> Path:
    """A small random Llama with the tiny tokenizer (400 tokens, 2 layers), saved as a model folder: a
    non-tiny base that every plan must pre-flight and load like a real checkpoint."""
    from harness.train.graph import _tiny_texts
    from harness.train.tiny import make_tiny_model, make_tiny_tokenizer

    folder = tmp_path_factory.mktemp("small_model") / "tiny-base"
    tok = make_tiny_tokenizer(_tiny_texts()[1][:200], 400)
    make_tiny_model(tok, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
