"""``python -m harness audit``: the label/EOS audit of the trl pipeline for one tokenizer.

Exit codes: 0 clean (warnings allowed), 1 any error finding, 2 the tokenizer or data cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.atomic import write_bytes
from harness.audit.loading import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True,
                        help="hub id, tokenizer folder, or a folder name inside the tokenizer zoo")
    parser.add_argument("--chat-template", metavar="FILE", help="Jinja chat template to use instead of the tokenizer's")
    parser.add_argument("--format", dest="fmt", default="conversational", choices=FORMATS,
                        help="data format (default: conversational prompt/completion)")
    parser.add_argument("--data", metavar="FILE.jsonl", help="JSONL dataset (default: the persona fixtures)")
    parser.add_argument("--pipeline", default="trl-sft", choices=("trl-sft", "trl-dpo", "hf-clm", "all"),
                        help="training pipeline to audit (default: trl-sft)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="truncation length (default: trl's own default; none for hf-clm)")
    parser.add_argument("--response-marker", metavar="TEXT",
                        help="text format: where the reply begins, e.g. '[/INST]' (completion-only judged there)")
    parser.add_argument("--json", metavar="PATH|-", help="write the findings as JSON to PATH, or '-' for stdout")
    parser.add_argument("--show", type=int, default=2, metavar="N", help="examples shown as tokens (default 2)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="audit only the first N examples")
    parser.add_argument("--zoo", metavar="DIR",
                        help="tokenizer zoo folder (default: $HARNESS_TOKENIZER_ZOO or ../shared/tokenizers)")
    parser.add_argument("--assistant-only-loss", action="store_true",
                        help="trl-sft with SFTConfig(assistant_only_loss=True) (conversational/messages data)")
    parser.add_argument("--packing", nargs="?", const="bfd", choices=("bfd", "bfd_split", "wrapped"), metavar="STRATEGY",
                        help="trl-sft with SFTConfig(packing=True, packing_strategy=STRATEGY) (default bfd): audit the "
                             "packed batch segment by segment")
    parser.add_argument("--padding-free", action="store_true",
                        help="trl-sft with SFTConfig(padding_free=True): audit the flattened batch (max_length unset "
                             "unless packing)")
    parser.add_argument("--no-completion-only-loss", dest="completion_only_loss", action="store_false", default=None,
                        help="trl-sft with SFTConfig(completion_only_loss=False): prompt/completion data trains the prompt")
    parser.add_argument("--train-turns", choices=("last", "all"),
                        help="which assistant turns of a conversation are meant to be trained (findings when others are)")
    parser.add_argument("--split-special-tokens", action="store_true",
                        help="load the tokenizer with split_special_tokens=True (special texts become pieces)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the tokenizer's own Python code (e.g. GLM-4); only for folders you trust")
    parser.add_argument("--fold-system", action="store_true",
                        help="fold a system message into the first user turn (templates that reject the system role)")
    parser.add_argument("--snapshot", metavar="PATH",
                        help="write a label snapshot (ids and trained positions per example, library versions)")
    parser.add_argument("--against", metavar="PATH",
                        help="compare with a label snapshot: list examples whose trained tokens changed (exit 1)")


def _write_json(payload: dict, dest: str) -> None:
    text = json.dumps(payload, ensure_ascii=False, indent=2)
    if dest == "-":
        sys.stdout.write(text + "\n")
        return
    write_bytes(Path(dest), text + "\n")


def _quiet_libraries() -> None:
    """Keep library import chatter out of the output (bitsandbytes' kernels warning, transformers' notices)."""
    import logging

    for name in ("bitsandbytes", "transformers", "trl", "datasets", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.errors import HarnessError

    if args.max_length is not None and args.max_length < 1:
        raise HarnessError(f"--max-length must be a positive number of tokens, not {args.max_length}")
    if args.show < 0:
        raise HarnessError(f"--show must be 0 or more, not {args.show}")
    _quiet_libraries()
    from harness.audit.core import audit
    from harness.audit.view import show
    from harness.config import from_env

    env = from_env()  # HARNESS_TOKENIZER_ZOO, HARNESS_DATA_DIR: read once, here at the edge
    err = Console(stderr=True)
    kwargs = {}
    if args.split_special_tokens:
        kwargs["split_special_tokens"] = True
    if args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    with err.status(f"auditing {args.tokenizer} ({args.pipeline}, {args.fmt})…"):
        report = audit(args.tokenizer, chat_template=args.chat_template, fmt=args.fmt, data=args.data,
                       pipeline=args.pipeline, max_length=args.max_length, response_marker=args.response_marker,
                       zoo=args.zoo or env.tokenizer_zoo, tokenizer_kwargs=kwargs or None, limit=args.limit,
                       assistant_only_loss=args.assistant_only_loss, fold_system=args.fold_system,
                       data_dir=env.data_dir, cache_root=env.fixtures_dir, packing=args.packing,
                       padding_free=args.padding_free, train_turns=args.train_turns,
                       completion_only_loss=args.completion_only_loss)
    if args.json:
        _write_json(report.to_dict(), args.json)
    out = Console(stderr=args.json == "-")
    if args.json != "-":
        show(report, report.tok, report.info, n=max(args.show, 0))
    code = report.exit_code
    if args.snapshot:
        from harness.audit.snapshot import write_snapshot

        out.print(f"label snapshot written to {write_snapshot(report, args.fmt, args.snapshot)}")
    if args.against:
        from harness.audit.snapshot import compare

        diff = compare(report, args.fmt, args.against)
        out.print(diff.versions_line())
        for c in diff.changes:
            out.print(c.line(), markup=False, highlight=False)
        for k in diff.missing_runs:
            out.print(f"not in the snapshot: {k}", markup=False)
        out.print(f"{len(diff.changes)} of {diff.compared} sequences changed their trained tokens")
        if diff.changes:
            code = max(code, 1)
    return code
