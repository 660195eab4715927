"""Self-generated post-training data (study 003): n candidates per prompt, the most central kept.

1. For each prompt the model itself samples ``n`` candidate replies (:func:`generate`).
2. Each candidate is embedded with the model's **own hidden states**: the last hidden layer
   (``hidden_states[-1]``, after the final norm in Llama-style models), mean-pooled over the
   reply's tokens (the reply text alone, without the prompt or template, so that replies are
   compared with each other rather than through the prompt they share).
3. Each candidate scores its mean cosine similarity to the *other* candidates
   (:func:`centrality`), and the highest scorer (the medoid; ties go to the first) is chosen,
   as in MBR selection.

Methods (our reading of the poster; the original reply is scored in the same pool as the
generated candidates, and "ranks low" means its centrality rank is in the lower
``low_fraction`` of the pool):

- ``reuse`` (①): the original reply is the target for every item.
- ``pick`` (②): the most central *generated* candidate is the target.
- ``drop_low`` (③): as ``pick``, but items whose original reply ranks low are dropped.
- ``keep_low`` (④): as ``pick``, but items whose original reply ranks low keep the original.

SFT records are ``{"prompt": [system, user], "completion": [assistant]}``; DPO records add
``chosen`` (the target) and ``rejected`` (the least central generated candidate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from harness.errors import HarnessError
from harness.registry import Registry

METHODS: Registry[str] = Registry("selfgen method")
for _name, _doc in (("reuse", "① reuse the original reply"), ("pick", "② pick the most central generated reply"),
                    ("drop_low", "③ as pick, dropping items whose original reply ranks low"),
                    ("keep_low", "④ as pick, keeping the original reply when it ranks low")):
    METHODS.add(_name, _doc)
KINDS = ("sft", "dpo")


def centrality(embeddings: Any) -> np.ndarray:
    """Mean cosine similarity of each row to the other rows, in [-1, 1]; a lone row scores 1.

    A zero row has cosine 0 with everything. Computed in float64.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise HarnessError(f"centrality needs a non-empty (n, d) matrix of embeddings, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise HarnessError("centrality: embeddings hold NaN or infinite values")
    n = e.shape[0]
    if n == 1:
        return np.ones(1)
    # Scale each row by its max-abs first so that the norm neither overflows nor underflows.
    scale = np.abs(e).max(axis=1, keepdims=True)
    e = np.divide(e, scale, out=np.zeros_like(e), where=scale > 0)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    sim = unit @ unit.T
    np.fill_diagonal(sim, 0.0)
    return np.clip(sim.sum(axis=1) / (n - 1), -1.0, 1.0)


def medoid(embeddings: Any) -> int:
    """Index of the most central row (the first one on ties)."""
    return int(np.argmax(centrality(embeddings)))


@torch.inference_mode()
def embed(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Mean-pooled last-hidden-layer embeddings of ``texts`` (no special tokens added)."""
    for k, t in enumerate(texts):
        if not t or not t.strip():
            raise HarnessError(f"embed: text {k} is empty; an empty generation has no embedding")
    from harness.inference.generate import cpu_threads

    dev = next(model.parameters()).device
    out = []
    with cpu_threads(model, 1):
        out = _embed_batches(model, tokenizer, texts, batch_size, dev)
    return np.concatenate(out).astype(np.float64)


def _embed_batches(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, dev: Any) -> list:
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[s : s + batch_size]), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(dev)
        hs = model(**enc, output_hidden_states=True).hidden_states[-1].float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((hs * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    return out


@dataclass(frozen=True)
class Item:
    """One prompt with its original reply (from the existing dataset)."""

    id: str
    prompt: str
    original: str


@dataclass(frozen=True)
class Scored:
    """An item's candidates and their centrality; index ``len(candidates)`` is the original."""

    item: Item
    candidates: tuple[str, ...]
    scores: tuple[float, ...]  # generated candidates first, then the original

    @property
    def best(self) -> int:
        gen = self.scores[: len(self.candidates)]
        return int(np.argmax(gen))

    @property
    def worst(self) -> int:
        gen = self.scores[: len(self.candidates)]
        return int(np.argmin(gen))

    def original_ranks_low(self, low_fraction: float) -> bool:
        """True when the original's rank (0 = most central) is in the lower ``low_fraction``."""
        pool = np.asarray(self.scores)
        rank = int((pool > pool[-1]).sum())
        return rank >= len(pool) * (1.0 - low_fraction)


def score_items(items: Sequence[Item], candidates: Sequence[Sequence[str]], model: Any, tokenizer: Any) -> list[Scored]:
    """Embed every item's candidates and original reply and score them in one pool per item."""
    if len(items) != len(candidates):
        raise HarnessError(f"{len(items)} items but {len(candidates)} candidate lists")
    out = []
    for it, cands in zip(items, candidates):
        cands = [c for c in cands if c and c.strip()]  # an empty reply has no embedding; it cannot win
        if not cands:
            raise HarnessError(f"item {it.id!r} (prompt {it.prompt[:30]!r}): every generated candidate is empty "
                               "(the model stops at once: check its EOS training, or sample more)")
        if not it.original.strip():
            raise HarnessError(f"item {it.id!r}: the original reply is empty")
        emb = embed(model, tokenizer, list(cands) + [it.original])
        out.append(Scored(it, tuple(cands), tuple(float(x) for x in centrality(emb))))
    return out


def build_records(scored: Sequence[Scored], method: str, kind: str = "sft", system: Optional[str] = None,
                  low_fraction: float = 0.5) -> tuple[list[dict], dict[str, int]]:
    """SFT or DPO records for ``method``, and counts (items, kept, dropped, original_used)."""
    METHODS.get(method)
    if kind not in KINDS:
        raise HarnessError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    if not 0.0 <= low_fraction <= 1.0:
        raise HarnessError(f"low_fraction must lie in [0, 1], got {low_fraction}")
    records, stats = [], {"items": len(scored), "kept": 0, "dropped": 0, "original_used": 0}
    for s in scored:
        low = s.original_ranks_low(low_fraction)
        if method == "drop_low" and low:
            stats["dropped"] += 1
            continue
        use_original = method == "reuse" or (method == "keep_low" and low)
        target = s.item.original if use_original else s.candidates[s.best]
        stats["original_used"] += use_original
        stats["kept"] += 1
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": s.item.prompt}]
        rec: dict[str, Any] = {"prompt": prompt}
        if kind == "sft":
            rec["completion"] = [{"role": "assistant", "content": target}]
        else:
            rec["chosen"] = [{"role": "assistant", "content": target}]
            rec["rejected"] = [{"role": "assistant", "content": s.candidates[s.worst]}]
        records.append(rec)
    return records, stats


def generate_candidates(model: Any, tokenizer: Any, items: Sequence[Item], n: int, *, system: Optional[str] = None,
                        max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 0.95,
                        seed: int = 0, batch_size: int = 8) -> list[list[str]]:
    """``n`` sampled candidate replies per item (greedy when ``temperature`` is 0)."""
    from harness.inference.generate import generate

    if n < 1:
        raise HarnessError(f"n must be at least 1, got {n}")
    gens = generate(model, [it.prompt for it in items], tokenizer=tokenizer, system=system,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=temperature > 0,
                    temperature=temperature, top_p=top_p, num_return_sequences=n if temperature > 0 else 1,
                    seed=seed, desc="selfgen")
    per = n if temperature > 0 else 1
    cands = [[g.text.strip() for g in gens[k * per : (k + 1) * per]] for k in range(len(items))]
    return [c * n if per == 1 else c for c in cands]


def write_jsonl(records: Sequence[dict], path: Path) -> None:
    """Write records as JSONL to a temporary file, then rename it into place."""
    from harness.atomic import write_bytes

    write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@dataclass(frozen=True)
class SelfgenSpec:
    """How a plan's selfgen node makes its data from its parent (the node key covers every field)."""

    source: str = "d1"  # the dataset whose prompts and original replies are used
    method: str = "pick"
    n: int = 4
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 48
    low_fraction: float = 0.5

    def __post_init__(self) -> None:
        METHODS.get(self.method)
        if self.n < 1:
            raise HarnessError(f"selfgen n must be at least 1, got {self.n}")


def make_records(model_dir: Any, spec: SelfgenSpec, kind: str, *, data_seed: int = 0, limit: int = 0,
                 seed: int = 0, system: Optional[str] = None, device: str = "auto",
                 data_dir: Any = None) -> tuple[list[dict], dict[str, int]]:
    """Study 003's loop on one model: its own ``n`` candidates per prompt of ``spec.source`` (read from
    ``data_dir``, default the packaged data), scored by centrality on its own hidden states, turned into
    ``kind`` (sft/dpo) records by ``spec.method``."""
    from harness import data
    from harness.inference.generate import load_model

    pairs = data.dataset(spec.source, data_seed, folder=data_dir)[: limit or None]
    items = [Item(p.id, p.prompt, p.reply) for p in pairs]
    model, tok = load_model(model_dir, device)
    cands = generate_candidates(model, tok, items, spec.n, system=system, max_new_tokens=spec.max_new_tokens,
                                temperature=spec.temperature, top_p=spec.top_p, seed=seed)
    return build_records(score_items(items, cands, model, tok), spec.method, kind, system, spec.low_fraction)
