"""``python -m harness judge GENERATIONS.jsonl``: persona scores by an LLM judge (seed table 25).

The endpoint comes from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``; the key is never printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.evaluate.judge import DEFAULT_MODEL, Judge, JudgeConfig, Rubric, table25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("generations", help="generations.jsonl written by `python -m harness evaluate`")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="judge model name (default gpt-4o-mini)")
    parser.add_argument("--language", default="Japanese", help="language of the judge's reasoning (seed: Japanese)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-attempts", type=int, default=5, help="attempts per item on 429/5xx/timeouts")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each time)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--cache-dir", default=".fixtures/judge-cache", help="on-disk reply cache ('' = off)")
    parser.add_argument("--rubric-dir", default=None, help="folder with rubric.txt, profile.txt, examples.txt")
    parser.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens (default: known models)")
    parser.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens")
    parser.add_argument("--out", default="findings/judge", help="folder for table25.* and judgements.jsonl")
    parser.add_argument("--max-tokens", type=int, default=1024, help="cap on the judge's reply in tokens")
    parser.add_argument("--serve", default=None, metavar="MODEL",
                        help="serve MODEL (folder, hub id or .gguf file) with `transformers serve` on loopback "
                        "and judge with it (overrides --model and the OPENAI_* endpoint)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device for --serve")


def load_generations(path: Path) -> list[dict]:
    """The rows of a generations JSONL (``harness.data.load_jsonl``: errors name file:line:field)."""
    from harness import data

    return data.load_jsonl(path, {"node": str, "source": str, "question": str, "text": str}, id_field=None,
                           allow_empty=("text",))


def run(args: argparse.Namespace) -> int:
    from harness.atomic import write_json
    from harness.inference.selfgen import write_jsonl
    from harness.evaluate.similarity import write_table

    from harness.config import from_env
    from harness.inference.serve import session_endpoint

    env = from_env()  # this command is an edge: HARNESS_FIXTURES_DIR, HARNESS_GGUF_DIR, read here once
    rows = load_generations(Path(args.generations))
    endpoint, server = session_endpoint(args.serve, device=args.device, cache_root=env.fixtures_dir,
                                        gguf_dir=env.gguf_folder, judge_model=env.judge_model)
    try:
        cfg = JudgeConfig(model=endpoint.model if args.serve else args.model, language=args.language,
                          concurrency=args.concurrency, max_attempts=args.max_attempts, backoff_base=args.backoff,
                          timeout=args.timeout, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                          price_in_per_mtok=args.price_in, price_out_per_mtok=args.price_out,
                          max_tokens=args.max_tokens, base_url=endpoint.base_url)
        judge = Judge(cfg, Rubric.load(Path(args.rubric_dir)) if args.rubric_dir else None)
        results = judge.score([(r["question"], r["text"]) for r in rows])
    finally:
        if server is not None:
            server.stop()
    grouped: dict[tuple[str, str], list] = {}
    for r, res in zip(rows, results):
        grouped.setdefault((r["node"], r["source"]), []).append(res)
    table = table25(grouped, cfg.model, judge.usage)
    out = Path(args.out)
    write_table(table, out)
    write_jsonl([{"node": r["node"], "source": r["source"], "id": r.get("id"), "score": res.score,
                  "reason": res.reason, "cached": res.cached, "attempts": res.attempts, "reply": res.reply}
                 for r, res in zip(rows, results)], out / "judgements.jsonl")
    write_json(out / "usage.json", judge.usage.to_json(), indent=1)
    print(table.markdown())
    return 0
