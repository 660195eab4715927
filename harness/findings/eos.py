"""C6 ("EOS is learned"): generate with a trained model and turn the outputs into a
:class:`~harness.findings.statistics.GenerationSource`; train small models for zoo tokenizers.

Generation goes through ``harness.inference.generate`` (greedy, batched, the chat template with
the system prompt, stop tokens, ``hit_max``) in :func:`generations` only, so it is swapped in one
place. Results are cached on disk (JSON, written atomically) keyed by the model's key and the
generation settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from harness.atomic import write_bytes as atomic_write
from harness.findings.statistics import GenerationSource

MAX_NEW_TOKENS = 64


def stop_texts(tokenizer: Any, model: Any = None) -> list[str]:
    """The text forms of the stop tokens (EOS first): printing one of them is the 004 bug."""
    from harness.inference.generate import stop_token_ids

    texts = [tokenizer.eos_token] if tokenizer.eos_token else []
    for i in stop_token_ids(tokenizer, model):
        t = tokenizer.convert_ids_to_tokens(int(i))
        if t and t not in texts:
            texts.append(t)
    return texts


def generations(model_dir: Path, prompts: Sequence[Any], *, tokenizer: Any = None, device: str = "auto",
                max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = False) -> GenerationSource:
    """Greedy generation for every prompt (message lists through the chat template)."""
    from harness.inference.generate import generate, load_model

    model, tok = load_model(model_dir, device)
    tok = tokenizer or tok
    gens = generate(model, list(prompts), tokenizer=tok, max_new_tokens=max_new_tokens, device=device,
                    progress=progress, desc=f"generate {Path(model_dir).name}")
    return _source(gens, stop_texts(tok, model), {"max_new_tokens": max_new_tokens})


def cached_generations(model_dir: Path, key: str, prompts: Sequence[Any], cache_dir: Path | None, *,
                       tokenizer: Any = None, device: str = "auto", max_new_tokens: int = MAX_NEW_TOKENS,
                       progress: bool = False) -> GenerationSource:
    """:func:`generations`, cached under ``cache_dir`` by model key, prompts and settings."""
    blob = json.dumps([key, prompts, max_new_tokens, getattr(tokenizer, "chat_template", None)],
                      ensure_ascii=False, sort_keys=True, default=str)
    path = Path(cache_dir) / (hashlib.sha256(blob.encode()).hexdigest()[:24] + ".json") if cache_dir else None
    if path is not None and path.is_file():
        d = json.loads(path.read_text(encoding="utf-8"))
        return GenerationSource(d["stopped"], d["texts"], d["eos_texts"], d["meta"], d.get("token_ids", ()),
                                d.get("hit_max", ()))
    src = generations(model_dir, prompts, tokenizer=tokenizer, device=device, max_new_tokens=max_new_tokens,
                      progress=progress)
    if path is not None:
        atomic_write(path, json.dumps({"stopped": list(src.stopped), "texts": list(src.texts),
                                       "eos_texts": list(src.eos_texts), "meta": dict(src.meta),
                                       "token_ids": [list(t) for t in src.token_ids], "hit_max": list(src.hit_max)},
                                      ensure_ascii=False))
    return src


def _source(gens: Sequence[Any], eos_texts: Sequence[str], meta: dict) -> GenerationSource:
    return GenerationSource(stopped=[g.stopped for g in gens], texts=[g.text for g in gens], eos_texts=eos_texts,
                            meta={**meta, "hit_max": sum(g.hit_max for g in gens), "n": len(gens)},
                            token_ids=[list(g.token_ids) for g in gens], hit_max=[g.hit_max for g in gens])


def node_source(graph: Any, node: str, *, device: str = "auto", progress: bool = False,
                settings: Any = None, longest_reply: int = 0, data_dir: Any = None,
                records: Sequence[dict] | None = None, records_tokenizer: Any = None) -> GenerationSource:
    """A graph node's greedy generations on the held-out evaluation prompts, through the fixture
    store's generation cache (``harness.evaluate.nodes``, shared with the output claims).
    ``settings`` (a ``GenSettings``) carries the budget; ``longest_reply`` is what it was scaled from;
    ``data_dir`` holds the prompts (default: the packaged data). The source samples the same prompts on
    demand (``sample``), and with ``records`` (the SFT records a node trained on, rendered with
    ``records_tokenizer``, default the node's) it reads P(stop | reply) on them (``stop_probe``, cached in the
    fixture store by the node's key)."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from harness.evaluate.nodes import GenSettings, node_generations, prompts

    settings = settings or GenSettings()
    ps = prompts("eval", folder=data_dir)
    tok = AutoTokenizer.from_pretrained(str(graph.path(node)))
    eos = stop_texts(tok)
    meta = {"max_new_tokens": settings.max_new_tokens, "longest_reply": longest_reply}

    def gens_source(s: Any) -> GenerationSource:
        return _source(node_generations(graph, node, ps, s, device=device, progress=progress), eos, meta)

    def sample(temperature: float, top_p: float, seed: int) -> GenerationSource:
        return gens_source(replace(settings, do_sample=True, temperature=temperature, top_p=top_p, seed=seed))

    def probe(limit: int) -> Any:
        return node_stop_probs(graph, node, records or [], limit, records_tokenizer or tok, device)

    src = gens_source(settings)
    src.sample = sample
    src.stop_probe = probe if records else None
    return src


def node_stop_probs(graph: Any, node: str, records: Sequence[dict], limit: int, tokenizer: Any,
                    device: str = "auto") -> Any:
    """P(stop | reply) of a graph node on the first ``limit`` of ``records`` rendered with ``tokenizer`` (a
    :class:`harness.inference.stopprob.StopProbs`), cached in the fixture store by the node's key: what a
    :func:`node_source`'s ``stop_probe`` reads."""
    from harness.evaluate.nodes import fixtures_dir
    from harness.inference.stopprob import cached_stop_probs

    recs = list(records)[: limit or None]
    return cached_stop_probs(graph.path(node), str(graph.key(node)), recs, fixtures_dir(graph),
                             tokenizer=tokenizer, device=device, label=node)


def folder_key(folder: Path) -> str:
    """A content hash of a tokenizer (or model) folder's small files."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and f.stat().st_size < 50_000_000:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def train_for_tokenizer(tokenizer: Any, out_dir: Path, *, dataset: str = "d1", recipe: Any = None,
                        pretrain_steps: int = 400, device: str = "cpu", seed: int = 0,
                        progress: bool = False) -> Path:
    """A small Llama for ``tokenizer``: pretrained on D0-style text, then SFT'd through trl on
    ``dataset``'s persona records with the tokenizer's own chat template. Written atomically;
    returns ``out_dir`` (the merged checkpoint with the tokenizer).

    Measured on the shared 2-core CPU for a 32k vocabulary: 60 pretraining steps and one SFT epoch
    took 7.5 min and left a model that stopped on 28% of prompts, so the defaults here (400 steps,
    3 epochs) are meant for CUDA, where they take seconds."""
    import shutil
    import tempfile

    from harness import data
    from harness.train.gpus import choose_threads
    from harness.train.recipe import Recipe
    from harness.train.sft import train_sft
    from harness.train.tiny import make_tiny_model, pretrain

    choose_threads(1)  # on the CPU one thread, so the same setup gives the same model whatever the load
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        model = make_tiny_model(tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, seed=seed)
        pretrain(model, tokenizer, data.pretrain_texts(), max_steps=pretrain_steps, min_steps=pretrain_steps,
                 batch_size=16, seq_len=96, learning_rate=3e-3, seed=seed, device=device, progress=progress)
        base = tmp / "base"
        model.save_pretrained(base, safe_serialization=True)
        tokenizer.save_pretrained(base)
        recipe = recipe or Recipe(epochs=3, batch_size=8, learning_rate=1e-3, max_length=192, logging_steps=5)
        train_sft(base, tokenizer, data.sft_records(dataset), recipe, tmp / "sft", device, quantize_4bit=False,
                  seed=seed, progress=progress)
        shutil.rmtree(base)
        (tmp / "sft").rename(out_dir) if not out_dir.exists() else None
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
