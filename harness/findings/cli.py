"""``python -m harness findings compare RUN.json RUN.json [...]``: findings of several runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="findings_command", metavar="SUBCOMMAND")
    sub.required = True
    c = sub.add_parser("compare", help="side-by-side table of findings runs (Markdown, JSON, PNG heat map)",
                       description=__doc__)
    c.add_argument("runs", nargs="+", metavar="RUN.json", help="findings JSON files (findings/<plan>/<run>.json)")
    c.add_argument("--out", default=str(Path("findings") / "compare"),
                   help="prefix of the written files: PREFIX.md, PREFIX.json, PREFIX.png (default: findings/compare)")


def run(args: argparse.Namespace) -> int:
    from harness.findings.compare import load_runs, markdown, table, write

    t = table(load_runs(args.runs))
    print(markdown(t))
    paths = write(t, Path(args.out))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0
