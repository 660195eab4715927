"""BLEU (sacrebleu) and BERTScore (bert-score) between generations and references, and the study's
tables 24 (node × BLEU/BERTScore against D0 and D1) and 27 (pairwise between nodes' generations).

BLEU is reported on the study's 0–1 scale (sacrebleu's score / 100). Japanese has no spaces, so
BLEU's tokenizer matters: ``ja-mecab`` (sacrebleu's own, from ``pip install sacrebleu[ja]``) when
it can be loaded, else ``char`` (one token per character). Every table names the one used.
BERTScore is the F1 of bert-score with a configurable model; the default is the study's
multilingual BERT, used when it can be loaded (hub or local cache). Any local encoder or decoder
folder, a GGUF file or a plan node works offline, with the layer chosen as bert-score does
(:func:`bert_layer`); the tables name the model and layer. Where a plan's graph is at hand (the claims'
C7), :func:`default_bert_score` uses the multilingual BERT only when it is in the local Hugging Face
cache, else the plan's own base node, which exists offline wherever the graph does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from harness.atomic import write_bytes
from harness.errors import HarnessError, LoadError

DEFAULT_BERT = "bert-base-multilingual-cased"
#: bert-score's own layer choice for the default model.
DEFAULT_BERT_LAYERS = 9
BLEU_TOKENIZERS = ("auto", "ja-mecab", "char")


def bleu_tokenizer(preferred: str = "auto") -> str:
    """The sacrebleu tokenizer name to use: ``ja-mecab`` when it loads, else ``char``."""
    if preferred not in BLEU_TOKENIZERS:
        raise HarnessError(f"unknown BLEU tokenizer {preferred!r}; known: {', '.join(BLEU_TOKENIZERS)}")
    if preferred == "char":
        return "char"
    try:
        from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

        TokenizerJaMecab()
        return "ja-mecab"
    except Exception as e:  # ImportError, or MeCab without its dictionary
        if preferred == "ja-mecab":
            raise LoadError(f"BLEU tokenizer 'ja-mecab' cannot be loaded ({e}); pip install 'sacrebleu[ja]'") from None
        return "char"


def _check_pairs(hyps: Sequence[str], refs: Sequence[str], what: str) -> None:
    if len(hyps) != len(refs):
        raise HarnessError(f"{what}: {len(hyps)} generations but {len(refs)} references")
    if not hyps:
        raise HarnessError(f"{what}: no generations to score")


def bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "char", what: str = "BLEU") -> float:
    """Corpus BLEU of ``hyps`` against one reference each, on a 0–1 scale."""
    import sacrebleu

    _check_pairs(hyps, refs, what)
    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize).score / 100.0


def bert_layer(model: str) -> int:
    """The layer bert-score uses for ``model``: its own table's entry for the model's name (a local
    folder by its folder name or the hub id its config names), else three quarters of the model's
    depth, rounded up: bert-score's choice for bert-base (layer 9 of 12) and xlm-roberta-base.
    """
    import math

    from bert_score.utils import model2layers

    p = Path(model)
    names = [str(model), p.name]
    cfg: dict[str, Any] = {}
    if (p / "config.json").is_file():
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
        names += [str(cfg.get("_name_or_path", "")), str(cfg.get("_name_or_path", "")).split("/")[-1]]
    for n in names:
        if n in model2layers:
            return int(model2layers[n])
        hits = [k for k in model2layers if k.split("/")[-1] == n]
        if hits:
            return int(model2layers[hits[0]])
    depth = cfg.get("num_hidden_layers") or cfg.get("num_layers") or cfg.get("n_layer")
    if not depth and isinstance(cfg.get("text_config"), dict):
        depth = cfg["text_config"].get("num_hidden_layers")
    if not depth:
        raise HarnessError(f"BERTScore model {model!r}: bert-score has no layer for it and its config names no "
                           "depth (num_hidden_layers); pass num_layers")
    return max(1, math.ceil(0.75 * int(depth)))


class BertScore:
    """A loaded bert-score scorer (the model is loaded once and reused for every table cell).

    ``model`` is bert-score's ``model_type``: a hub id or any local encoder or decoder folder
    (BERT, RoBERTa, Llama, Gemma...); ``num_layers`` None picks the layer as :func:`bert_layer`.
    A decoder without a padding token pads with its EOS (the padded positions are masked).
    """

    def __init__(self, model: str = DEFAULT_BERT, num_layers: Optional[int] = None, device: str = "cpu",
                 batch_size: int = 64, name: Optional[str] = None) -> None:
        from bert_score import BERTScorer

        self.name = name  # what the tables call the model (a GGUF file's name for its converted folder)

        if num_layers is None:
            num_layers = DEFAULT_BERT_LAYERS if model == DEFAULT_BERT else bert_layer(str(model))
        try:
            self._scorer = BERTScorer(model_type=str(model), num_layers=num_layers, device=device,
                                      batch_size=batch_size, use_fast_tokenizer=True)
        except (OSError, ValueError, AssertionError) as e:
            raise LoadError(f"BERTScore model {model!r} cannot be loaded ({str(e).splitlines()[0]})") from None
        # transformers 5 loads in the checkpoint's dtype; bf16 cosines drift past 1, so score in float32.
        self._scorer._model.float()
        tok = self._scorer._tokenizer
        if tok.pad_token_id is None:
            if tok.eos_token is None:
                raise LoadError(f"BERTScore model {model!r}: its tokenizer has neither a padding nor an EOS token")
            tok.pad_token = tok.eos_token
        if tok.model_max_length > 1_000_000:  # "unbounded" (1e30) overflows the fast tokenizer's truncation
            tok.model_max_length = int(getattr(self._scorer._model.config, "max_position_embeddings", 512) or 512)
        self.model = str(model)
        self.num_layers = num_layers

    def f1(self, hyps: Sequence[str], refs: Sequence[str], what: str = "BERTScore") -> float:
        """Mean BERTScore F1 of ``hyps`` against one reference each."""
        _check_pairs(hyps, refs, what)
        # bert-score encodes an empty (or blank) text as the special tokens alone, through a method that
        # transformers 5's tokenizers backend lacks; an empty reply is scored as the EOS token's text.
        tok = self._scorer._tokenizer
        empty = tok.eos_token or tok.unk_token or "."
        from harness.inference.generate import cpu_threads

        with cpu_threads(self._scorer._model, 1):  # as generation: OpenMP spin-waits on shared cores
            _, _, f = self._scorer.score([h if h.strip() else empty for h in hyps],
                                         [r if r.strip() else empty for r in refs])
        return float(f.mean())

    @property
    def label(self) -> str:
        name = self.name or (Path(self.model).name if os.path.isdir(self.model) else self.model)
        return f"{name} (layer {self.num_layers})"


def try_bert_score(model: Optional[str], num_layers: Optional[int], device: str = "cpu", *, graph: Any = None,
                   cache_root: Optional[Path] = None, gguf_dir: Optional[Path] = None
                   ) -> tuple[Optional[BertScore], str]:
    """A scorer, or ``None`` and the reason when the model cannot be loaded or none is asked for.

    ``model`` may also name a node of ``graph`` or a ``.gguf`` file (dequantized once into a cached folder).
    """
    if not model:
        return None, "BERTScore off"
    try:
        name = None
        if (graph is not None and model in getattr(graph, "names", ())) or str(model).endswith(".gguf"):
            from harness.inference.serve import resolve_model

            model, name = resolve_model(model, graph, cache_root, gguf_dir)
        return BertScore(model, num_layers, device, name=name), ""
    except LoadError as e:
        return None, f"BERTScore skipped: {e}"


def in_local_cache(model: str) -> bool:
    """Whether hub model ``model``'s config is in the local Hugging Face cache (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # a malformed id: not a cached hub model
        return False


def default_bert_score(graph: Any, num_layers: Optional[int] = None, device: str = "cpu", *,
                       cache_root: Optional[Path] = None, gguf_dir: Optional[Path] = None
                       ) -> tuple[Optional[BertScore], str]:
    """The BERTScore encoder when none is asked for: the study's multilingual BERT when it is in the local
    Hugging Face cache, else the base node of ``graph`` (the plan's own base, converted from its GGUF file
    where the plan says so), whose hidden states at the layer :func:`bert_layer` picks (three quarters of
    its depth, rounded up) are the embeddings; ``num_layers`` overrides the layer. The scorer's label names
    the encoder and the layer, so every row scored with it says which."""
    if in_local_cache(DEFAULT_BERT):
        return try_bert_score(DEFAULT_BERT, num_layers, device)
    node = graph.names[0]
    scorer, note = try_bert_score(node, num_layers, device, graph=graph, cache_root=cache_root, gguf_dir=gguf_dir)
    if scorer is not None:
        base = getattr(getattr(graph, "plan", None), "base", None)
        model = Path(base).name if base and base.startswith(("/", "$", "~", ".")) else base  # hub ids stay
        scorer.name = (f"the plan's base node {node!r}" + (f" ({model})" if model else "")
                       + f", as {DEFAULT_BERT} is not in the local cache")
    return scorer, note


@dataclass
class Table:
    """A named table: rows × columns of floats (None = not computed), with notes on how."""

    name: str
    title: str
    rows: list[str]
    columns: list[str]
    values: list[list[Optional[float]]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "rows": self.rows, "columns": self.columns,
                "values": self.values, "notes": self.notes}

    def cell(self, row: str, column: str) -> Optional[float]:
        return self.values[self.rows.index(row)][self.columns.index(column)]

    def markdown(self) -> str:
        head = f"### {self.title}\n\n| | " + " | ".join(self.columns) + " |\n|---|" + "---|" * len(self.columns)
        body = ["| " + r + " | " + " | ".join("—" if v is None else f"{v:.5f}" for v in vals) + " |"
                for r, vals in zip(self.rows, self.values)]
        notes = "".join(f"\n- {n}" for n in self.notes)
        return head + "\n" + "\n".join(body) + "\n" + (notes + "\n" if notes else "")


def table24(gens: Mapping[str, Sequence[str]], d0: Sequence[str], d1: Sequence[str], tokenize: str,
            scorer: Optional[BertScore], bert_note: str = "") -> Table:
    """Seed table 24: each node's generations on the dataset prompts against the D0 and D1 replies."""
    cols = ["BLEU(D0)", "BERTScore(D0)", "BLEU(D1)", "BERTScore(D1)"]
    values = []
    for node, hyps in gens.items():
        row: list[Optional[float]] = []
        for name, refs in (("D0", d0), ("D1", d1)):
            row.append(bleu(hyps, refs, tokenize, f"{node} vs {name}"))
            row.append(scorer.f1(hyps, refs, f"{node} vs {name}") if scorer else None)
        values.append(row)
    return Table("table24", "Table 24: generations vs the D0 and D1 replies", list(gens), cols, values,
                 _notes(tokenize, scorer, bert_note))


def table27(gens: Mapping[str, Sequence[str]], tokenize: str, scorer: Optional[BertScore],
            bert_note: str = "", metric: str = "BLEU") -> Table:
    """Seed table 27 for every pair: row node's generations scored against column node's."""
    if metric not in ("BLEU", "BERTScore"):
        raise HarnessError(f"unknown pairwise metric {metric!r}; known: BLEU, BERTScore")
    names = list(gens)
    values: list[list[Optional[float]]] = []
    for a in names:
        row: list[Optional[float]] = []
        for b in names:
            if metric == "BLEU":
                row.append(bleu(gens[a], gens[b], tokenize, f"{a} vs {b}"))
            else:
                row.append(scorer.f1(gens[a], gens[b], f"{a} vs {b}") if scorer else None)
        values.append(row)
    return Table(f"table27_{metric.lower()}", f"Table 27: pairwise {metric} between nodes' generations "
                 "(row = hypothesis, column = reference)", names, names, values, _notes(tokenize, scorer, bert_note))


def tokenizer_signature(tokenize: str) -> str:
    """``ja-mecab`` with its MeCab/dictionary version (``ja-mecab-0.996-IPA``), else the name."""
    if tokenize == "ja-mecab":
        try:
            from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

            return f"ja-mecab ({TokenizerJaMecab().signature()})"
        except Exception:
            pass
    return tokenize


def _notes(tokenize: str, scorer: Optional[BertScore], bert_note: str) -> list[str]:
    notes = [f"BLEU: sacrebleu corpus BLEU / 100, tokenize={tokenizer_signature(tokenize)}"]
    notes.append(f"BERTScore: F1, model {scorer.label}" if scorer else (bert_note or "BERTScore off"))
    return notes


def _atomic_write(path: Path, data: bytes) -> None:
    write_bytes(path, data)


def write_table(table: Table, out_dir: Path) -> list[Path]:
    """``<name>.md``, ``<name>.json`` and a heatmap ``<name>.png`` in ``out_dir``, each written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    md, js, png = (out_dir / f"{table.name}.{ext}" for ext in ("md", "json", "png"))
    _atomic_write(md, table.markdown().encode("utf-8"))
    _atomic_write(js, json.dumps(table.to_json(), ensure_ascii=False, indent=2).encode("utf-8"))
    arr = np.array([[np.nan if v is None else v for v in r] for r in table.values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(table.columns), 1.0 + 0.45 * len(table.rows)))
    im = ax.imshow(arr, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(table.rows)), table.rows, fontsize=8)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if not np.isnan(arr[i, j]):
                ax.text(j, i, f"{arr[i, j]:.3f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title(table.title + "\n" + "; ".join(table.notes), fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(png, buf.getvalue())
    return [md, js, png]
