"""``python -m harness diff A B [--base R] ...``: per-layer L1/L2 and sign conflicts."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="checkpoint A: model folder, .safetensors file, PEFT adapter folder or hub id")
    parser.add_argument("b", help="checkpoint B (same forms as A)")
    parser.add_argument("--base", metavar="R", help="reference checkpoint: enables sign conflicts, "
                        "Conflict-Limited L2 and the cosine of the task vectors A-R and B-R")
    parser.add_argument("--json", metavar="PATH", help="write the JSON report ('-' for stdout)")
    parser.add_argument("--csv", metavar="PATH", help="write a CSV of layers, modules, other, total")
    parser.add_argument("--plot", metavar="PNG", help="write per-layer deviation bars and a module x layer heatmap")
    parser.add_argument("--by", choices=("layer", "module"), default="layer", help="table rows (default: layer)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--top-k", type=int, default=10, metavar="K",
                        help="layers to mark by L2 (default: 10; none when K would take every layer)")
    parser.add_argument("--adapter-base", metavar="PATH", help="base model for adapter folders "
                        "(default: adapter_config.json's base_model_name_or_path)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from harness.config import from_env
    from harness.diff import DiffSettings, compare

    settings = DiffSettings.from_config(from_env())  # HARNESS_DIFF_*: the engines' tuning
    report = compare(args.a, args.b, args.base, device=args.device, progress=not args.no_progress,
                     adapter_base=args.adapter_base, settings=settings)
    if args.json:
        report.to_json(args.json)
    if args.csv:
        report.to_csv(args.csv)
    if args.plot:
        report.plot(args.plot, top_k=args.top_k)
    if args.json != "-":
        print(report.table(by=args.by, top_k=args.top_k))
    return 0
