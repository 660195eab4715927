"""``python -m harness evaluate PLAN``: generate with every node, then BLEU/BERTScore tables 24 and 27."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError
from harness.inference.generate import Generation, summary
from harness.evaluate.nodes import SOURCES, GenSettings, graph_generations
from harness.evaluate.similarity import (BLEU_TOKENIZERS, DEFAULT_BERT, Table, bleu_tokenizer, table24, table27,
                                         try_bert_score, write_table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan TOML (e.g. fixtures/plans/tiny.toml); missing nodes are built first")
    parser.add_argument("--fixtures-dir", default=None, help="fixture store (default .fixtures or $HARNESS_FIXTURES_DIR)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NODE", help="evaluate these nodes only")
    parser.add_argument("--sources", default="persona,eval", help="prompt sources, comma-separated: persona, eval")
    parser.add_argument("--limit", type=int, default=0,
                        help="first N prompts of each source only (default: the plan's data limit; all eval prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--bleu-tokenize", default="auto", choices=BLEU_TOKENIZERS,
                        help="auto = ja-mecab when sacrebleu[ja] is installed, else char")
    parser.add_argument("--bertscore-model", default=DEFAULT_BERT,
                        help="hub id or local folder; '' turns BERTScore off (default: the study's mBERT, when reachable)")
    parser.add_argument("--bertscore-layers", type=int, default=None, help="layer bert-score reads (needed for a local model)")
    parser.add_argument("--out", default="findings/evaluate", help="folder for the tables and generations.jsonl")


def generation_table(gens: Mapping[tuple[str, str], Sequence[Generation]]) -> Table:
    """Stop and hit-max rates per node and source (hit-max is the output sign of the EOS bug)."""
    nodes = list(dict.fromkeys(n for n, _ in gens))
    sources = list(dict.fromkeys(s for _, s in gens))
    cols = [f"{k} ({s})" for s in sources for k in ("stop rate", "hit-max rate", "mean tokens")]
    values = []
    for n in nodes:
        row = []
        for s in sources:
            sm = summary(gens.get((n, s), []))
            row += [sm["stop_rate"], sm["hit_max_rate"], sm["mean_tokens"]]
        values.append(row)
    return Table("generation", "Generation: stop and hit-max rates", nodes, cols, values,
                 ["stop = ended on a stop token; hit-max = reached max_new_tokens without one"])


def write_generations(path: Path, gens: Mapping[tuple[str, str], Sequence[Generation]], questions: Mapping[str, Any]) -> None:
    """One JSON row per generation: node, source, id, question, text, stopped, hit_max (the judge's input)."""
    from harness.inference.selfgen import write_jsonl

    rows = []
    for (node, source), gs in gens.items():
        ids, qs = questions[source]
        for i, q, g in zip(ids, qs, gs):
            rows.append({"node": node, "source": source, "id": i, "question": q, "text": g.text,
                         "stopped": g.stopped, "hit_max": g.hit_max})
    write_jsonl(rows, path)


def run(args: argparse.Namespace) -> int:
    from harness import data
    from harness.evaluate.nodes import prompts

    try:
        from harness.train import build, load_plan
    except ImportError as e:
        raise HarnessError(f"the fixture graph engine (harness.train) is not available: {e}") from None
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise HarnessError(f"--sources: unknown source(s) {bad or sources}; known: {', '.join(SOURCES)}")
    from harness.config import from_env

    env = from_env()  # this command is an edge: the environment is read here, once
    fixtures = args.fixtures_dir or (str(env.fixtures_dir) if env.fixtures_dir else None)
    plan = load_plan(args.plan).configured(env)
    graph = build(plan, fixtures_dir=fixtures, device=args.device, only=args.only)
    settings = GenSettings(args.max_new_tokens, args.batch_size)
    persona_limit = min(x for x in (args.limit, plan.limit) if x) if (args.limit or plan.limit) else 0
    gens = graph_generations(graph, sources, settings, nodes=args.only, limit=persona_limit, eval_limit=args.limit,
                             data_dir=plan.data_dir,
                             device=args.device,
                             cache_root=Path(fixtures) if fixtures else None)
    out = Path(args.out)
    written = write_table(generation_table(gens), out)
    qs = {s: (p.ids, p.questions) for s in sources
          for p in [prompts(s, persona_limit if s == "persona" else args.limit, folder=plan.data_dir)]}
    write_generations(out / "generations.jsonl", gens, qs)
    if "persona" in sources:
        tok = bleu_tokenizer(args.bleu_tokenize)
        scorer, note = try_bert_score(args.bertscore_model, args.bertscore_layers,
                                      "cuda" if args.device == "cuda" else "cpu")
        items = data.load_persona(plan.data_dir)[: persona_limit or None]
        texts = {n: [g.text for g in gens[(n, "persona")]] for n in (args.only or graph.names)}
        t24 = table24(texts, [i.d0 for i in items], [i.d1 for i in items], tok, scorer, note)
        written += write_table(t24, out)
        for metric in ("BLEU", "BERTScore") if scorer else ("BLEU",):
            written += write_table(table27(texts, tok, scorer, note, metric), out)
        print(t24.markdown())
    print(json.dumps({"written": [str(p) for p in written + [out / 'generations.jsonl']]}, indent=1))
    return 0
