"""Helpers for the weight-diff tests: tiny real architectures, random shard layouts, a NumPy reference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def tiny_configs() -> dict:
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    return {
        "llama": LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
        "neox": GPTNeoXConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4),
        "gpt2": GPT2Config(vocab_size=48, n_embd=16, n_layer=2, n_head=4, n_positions=32,
                          bos_token_id=0, eos_token_id=0),
    }


def random_state(layout: dict, seed: int, scale: float = 0.05, dtype=torch.float32,
                 zero_frac: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layout.items():
        t = torch.randn(shape, generator=g) * scale
        if zero_frac:
            t = t * (torch.rand(shape, generator=g) >= zero_frac)
        out[name] = t.to(dtype).contiguous()
    return out


def write_checkpoint(folder: Path, tensors: dict, layout: str = "index", seed: int = 0) -> Path:
    """Write ``tensors`` as a bare file, a single model.safetensors, or random shards + index.

    Returns the path to give ``compare`` (the file for "bare", else the folder).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "bare":
        path = folder / "weights.safetensors"
        save_file(tensors, str(path))
        return path
    if layout == "single":
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    rng = random.Random(seed)
    names = list(tensors)
    rng.shuffle(names)
    n_shards = rng.randint(1, min(5, len(names)))
    weight_map = {}
    for i in range(n_shards):
        part = names[i::n_shards]
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / fname))
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def reference(a: dict, b: dict, r: dict | None = None) -> dict:
    """Plain float64 NumPy statistics per group: {"total": {...}, layer int: {...}, "other": ...}."""
    from harness.diff import layer_of

    groups: dict = {}
    for name in a:
        x = a[name].double().numpy().ravel()
        y = b[name].double().numpy().ravel()
        d = y - x
        key = layer_of(name)
        key = "other" if key is None else key
        for k in (key, "total"):
            g = groups.setdefault(k, {"numel": 0, "l1": 0.0, "sq": 0.0, "max_abs": 0.0, "changed": 0,
                                      "conflicts": 0, "csq": 0.0, "dot": 0.0, "na": 0.0, "nb": 0.0})
            g["numel"] += d.size
            g["l1"] += np.abs(d).sum()
            g["sq"] += (d * d).sum()
            g["max_abs"] = max(g["max_abs"], np.abs(d).max() if d.size else 0.0)
            g["changed"] += int((d != 0).sum())
            if r is not None:
                z = r[name].double().numpy().ravel()
                ta, tb = x - z, y - z
                c = np.sign(ta) * np.sign(tb) < 0
                g["conflicts"] += int(c.sum())
                g["csq"] += (d[c] ** 2).sum()
                g["dot"] += (ta * tb).sum()
                g["na"] += (ta * ta).sum()
                g["nb"] += (tb * tb).sum()
    out = {}
    for k, g in groups.items():
        v = {"numel": g["numel"], "l1": g["l1"], "l2": np.sqrt(g["sq"]), "max_abs": g["max_abs"],
             "changed": g["changed"]}
        if r is not None:
            v.update(conflicts=g["conflicts"], conflict_rate=g["conflicts"] / g["numel"],
                     conflict_l2=np.sqrt(g["csq"]),
                     cosine=g["dot"] / np.sqrt(g["na"] * g["nb"]) if g["na"] * g["nb"] else None)
        out[k] = v
    return out




def layouts_of(folder_root: Path) -> dict:
    """{arch: {tensor name: shape}} as ``save_pretrained`` writes each tiny architecture."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = {}
    for arch, cfg in tiny_configs().items():
        folder = Path(folder_root) / f"layout-{arch}"
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            out[arch] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return out
