"""``python -m harness selfgen MODEL``: SFT/DPO JSONL from the model's own generations (study 003)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.inference.selfgen import KINDS, METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (or hub id) that generates and embeds its own candidates")
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--method", default="pick", choices=METHODS.names(),
                        help="reuse (1), pick (2), drop_low (3), keep_low (4)")
    parser.add_argument("--kind", default="sft", choices=KINDS)
    parser.add_argument("--dataset", default="d1", help="dataset whose prompts and original replies are used (d0, d1, d2)")
    parser.add_argument("--n", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--limit", type=int, default=0, help="first N items only (0 = all)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (one candidate repeated)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--low-fraction", type=float, default=0.5,
                        help="the original 'ranks low' when its rank is in this lower fraction of the pool")
    parser.add_argument("--no-system", action="store_true", help="leave the system prompt out")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    from harness import data
    from harness.config import from_env
    from harness.inference.selfgen import SelfgenSpec, make_records, write_jsonl

    data_dir = from_env().data_dir  # HARNESS_DATA_DIR, read here at the edge

    spec = SelfgenSpec(args.dataset, args.method, args.n, args.temperature, args.top_p, args.max_new_tokens,
                       args.low_fraction)
    system = None if args.no_system else data.system_prompt(data_dir)
    records, stats = make_records(args.model, spec, args.kind, data_seed=args.seed, limit=args.limit, seed=args.seed,
                                  system=system, device=args.device, data_dir=data_dir)
    write_jsonl(records, Path(args.out))
    print(json.dumps({"out": args.out, "method": args.method, "kind": args.kind, **stats}))
    return 0
