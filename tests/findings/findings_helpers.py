"""Synthetic Llama-shaped checkpoint families for the findings tests.

A family is the study's node graph written as small safetensors checkpoints whose deltas are
chosen by the test: healthy (every weight claim holds) or broken in one place (a negative
control). Diffs go through the real ``harness.diff.compare``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import save_file

from harness.findings.diffs import NodeSet

LAYERS = 8
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj")
SHAPE = (16, 16)

PARENTS: Mapping[str, str | None] = {
    "base": None, "sft_d0": "base", "sft_d1": "base", "sft_d2": "base", "dpo_d0": "base", "dpo_d1": "base",
    "dpo_d0@sft_d2": "sft_d2", "dpo_d1@sft_d2": "sft_d2", "dpo_d0@sft_d1": "sft_d1", "dpo_d1@sft_d1": "sft_d1",
}

State = dict[str, torch.Tensor]


def names() -> list[str]:
    return ["model.embed_tokens.weight"] + [f"model.layers.{i}.{m}.weight" for i in range(LAYERS) for m in MODULES]


def randn(seed: int, scale_of_layer: Callable[[int], float] = lambda i: 1.0, density: float = 1.0) -> State:
    """A random state dict; ``scale_of_layer(i)`` scales block i; ``density`` < 1 zeroes positions."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names():
        layer = int(n.split(".")[2]) if ".layers." in n else 0
        t = torch.randn(SHAPE, generator=g) * scale_of_layer(layer)
        if density < 1.0:
            t = t * (torch.rand(SHAPE, generator=g) < density)
        out[n] = t
    return out


def add(a: State, b: State, k: float = 1.0) -> State:
    return {n: a[n] + k * b[n] for n in a}


def sft_delta(seed: int) -> State:
    """A dense SFT-sized update that grows with depth (C2 holds)."""
    return randn(seed, lambda i: 0.1 * (1.0 + i / LAYERS))


def dpo_delta(seed: int) -> State:
    """A small sparse update, as merged bf16 DPO deltas are (C1, C4 hold)."""
    return randn(seed, lambda i: 0.02, density=0.05)


def healthy() -> dict[str, State]:
    base = randn(1)
    s0, s1 = sft_delta(10), sft_delta(11)
    s2 = {n: torch.where(torch.arange(s0[n].numel()).reshape(SHAPE) % 2 == 0, s0[n], s1[n]) for n in s0}
    m = {"base": base, "sft_d0": add(base, s0), "sft_d1": add(base, s1), "sft_d2": add(base, s2)}
    for i, (name, parent) in enumerate((("dpo_d0", "base"), ("dpo_d1", "base"), ("dpo_d0@sft_d2", "sft_d2"),
                                         ("dpo_d1@sft_d2", "sft_d2"), ("dpo_d0@sft_d1", "sft_d1"),
                                         ("dpo_d1@sft_d1", "sft_d1"))):
        m[name] = add(m[parent], dpo_delta(20 + i))
    return m


def write_family(folder: Path, states: Mapping[str, State]) -> NodeSet:
    paths = {}
    for name, sd in states.items():
        d = folder / name.replace("@", "_at_")
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
        paths[name] = d
    return NodeSet(paths=paths, parents=dict(PARENTS))
