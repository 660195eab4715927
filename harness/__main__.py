"""Command line: ``python -m harness <command> ...``.

Each command lives in its engine's ``cli`` module, which exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported lazily so that
``python -m harness diff`` does not pay for importing trl.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from harness.errors import HarnessError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "diff": ("harness.diff.cli", "per-layer L1/L2 and sign conflicts between two checkpoints"),
    "audit": ("harness.audit.cli", "label/EOS audit of the trl training pipeline for a tokenizer"),
    "fixtures": ("harness.train.cli", "build, list or clean the fixture graph of a plan"),
    "evaluate": ("harness.evaluate.cli", "generate with every node and score BLEU/BERTScore"),
    "judge": ("harness.evaluate.judge_cli", "score generations with an LLM judge (openai client)"),
    "selfgen": ("harness.evaluate.selfgen_cli", "build SFT/DPO data from a model's own generations"),
    "findings": ("harness.findings.cli", "compare findings runs side by side (Markdown, JSON, PNG heat map)"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the module of the command actually asked for is imported.
        if wanted == name:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser of the (sub)command ``args`` selected (``fixtures build``, ``diff``, ...)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:
            # argparse hands a subcommand's unknown options up to the top level, whose usage
            # says nothing about them: answer with the usage of the (sub)command that was asked.
            leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
        return int(importlib.import_module(args._module).run(args) or 0)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
