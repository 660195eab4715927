"""Tiny random-weight models of the architectures transformers' GGUF loader reads (its
``GGUF_SUPPORTED_ARCHITECTURES``) that build at random from a config: each architecture's own
peculiarities kept (Qwen2's q/k/v biases, Qwen3's q/k norms, Gemma's soft-capping and sliding windows,
Phi-3's fused qkv and gate/up projections, Mistral's sliding window), every size as small as it goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# the GGUF architecture name -> (transformers config class, extra config fields)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),  # q/k/v projections with bias
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "sliding_window": 16}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 16}),
    "phi3": ("Phi3Config", {"pad_token_id": 0}),
    "mistral": ("MistralConfig", {"sliding_window": 16}),
}


def config(arch: str, vocab_size: int) -> Any:
    """A small config of ``arch``: 2 layers, hidden 64, 4 heads (2 key/value heads)."""
    import transformers

    name, extra = ARCHITECTURES[arch]
    return getattr(transformers, name)(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256, tie_word_embeddings=False, **extra)


def save_random(arch: str, folder: Path, vocab_size: int, tokenizer: Any = None, seed: int = 0,
                dtype: torch.dtype = torch.bfloat16) -> Path:
    """A random-weight ``arch`` model (and ``tokenizer``, when given) saved into ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(arch, vocab_size)).to(dtype)
    model.save_pretrained(str(folder), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
