"""Selfgen nodes (study 003): the parent generates, embeds and picks its own training data, which is kept in
the node folder; the data's identity (the spec, the source pairs, the system prompt, the seed) is in the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SELFGEN_FILE = "selfgen.jsonl"


def selfgen_identity(plan: Any, node: Any) -> dict:
    """What a selfgen node's data depends on besides its parent (whose key is in the node key already)."""
    from harness import data

    pairs = data.dataset(node.selfgen["source"], plan.data_seed, folder=plan.data_dir)[: plan.limit or None]
    return {"selfgen": dict(sorted(node.selfgen.items())), "source_pairs": data.records_hash(
        [[p.id, p.prompt, p.reply] for p in pairs]), "system": data.system_prompt(plan.data_dir),
        "seed": plan.seed}


def selfgen_records(graph: Any, name: str, tmp: Path, meta: dict) -> list[dict]:
    """The parent generates, embeds and picks its own data; kept in the node folder as ``selfgen.jsonl``."""
    from harness import data
    from harness.inference.selfgen import SelfgenSpec, make_records, write_jsonl
    from harness.train.methods import get

    plan, node = graph.plan, graph.plan.node(name)
    spec = SelfgenSpec(**dict(node.selfgen))
    records, stats = make_records(graph.path(node.parent), spec, get(node.method).kind, data_seed=plan.data_seed,
                                  limit=plan.limit, seed=plan.seed, system=data.system_prompt(plan.data_dir),
                                  device=graph.device, data_dir=plan.data_dir)
    if not records:
        raise HarnessError(f"node {name!r}: selfgen {spec.method} kept no item of {spec.source} ({stats})")
    write_jsonl(records, tmp / SELFGEN_FILE)
    meta["selfgen"] = {**dict(node.selfgen), **stats}
    return records
