"""What a node is made of, hashed: the records each node trains on and every node's cache key.

A key hashes the node's method, data, recipe, LoRA settings, parent key, seed, device and library
versions (the base: the tiny base's spec and texts, or a hub/GGUF base's identity). Cached nodes are
found by key, so nothing here may change what an existing plan hashes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.train import common, methods
from harness.train.plan import SELFGEN, Plan
from harness.train.selfgen_node import SELFGEN_FILE, selfgen_identity
from harness.train.store import Store, cache_key, library_versions

#: Bump when a recipe's code changes what it produces; part of every key.
RECIPE_VERSION = 1


def tiny_texts(folder: Path | None = None) -> tuple[list[str], list[str]]:
    """Pretraining texts, and the tokenizer's texts (those plus the rendered persona chats), of ``folder``'s data."""
    from harness import data

    texts = data.pretrain_texts(folder)
    sys_prompt = data.system_prompt(folder)
    chats = [f"{sys_prompt}\n{i.prompt}\n{r}" for i in data.load_persona(folder) for r in (i.d0, i.d1)]
    return texts, texts + chats


def resolve_base(plan: Plan, store: Store | None = None, progress: bool = False) -> tuple[Path | None, dict]:
    """(local folder, identity) of a non-tiny base: see :func:`harness.train.bases.resolve`."""
    from harness.train.bases import resolve

    return resolve(plan, store if store is not None else Store(), progress)


def node_records(plan: Plan, name: str) -> list[dict]:
    """The trl records a node trains on (after the plan's ``limit``)."""
    from harness import data

    node = plan.node(name)
    if node.dataset == SELFGEN:
        raise HarnessError(f"node {name!r}: its records are made from its parent when it is built "
                           f"(see {SELFGEN_FILE} in the node folder)")
    method = methods.get(node.method)
    if node.source:  # the node's own JSONL file (harness.userdata); the key hashes its records
        from harness.userdata import Source, load_records

        src = Source(Path(node.source["path"]), node.source.get("format"), node.source["chosen"],
                     node.source["rejected"])
        recs = load_records(src, method.kind, data.system_prompt(plan.data_dir))
    else:
        recs = method.builtin_records(node.dataset, plan.data_seed, plan.data_dir)
    return recs[: plan.limit] if plan.limit else recs


def plan_keys(plan: Plan, device: str, base_identity: dict | None = None) -> tuple[dict[str, str], dict[str, dict]]:
    """Every node's cache key and the inputs it hashes."""
    from harness import data

    quant = common.uses_4bit(device, plan.quantize_4bit)
    versions = library_versions(quant)
    keys: dict[str, str] = {}
    inputs: dict[str, dict] = {}
    for node in plan.nodes:
        if node.method == "base":
            if base_identity is None:
                texts, tok_texts = tiny_texts(plan.data_dir)
                tiny = dataclasses.asdict(plan.tiny)
                if tiny["dtype"] == "float32":  # the default before the field existed: keys stay as they were
                    del tiny["dtype"]
                base_identity = {"kind": "tiny", "tiny": tiny,
                                 "pretrain_texts": data.records_hash(texts),
                                 "tokenizer_texts": data.records_hash(tok_texts),
                                 "device": device, "versions": versions}
            inp = {"base": base_identity, "recipe_version": RECIPE_VERSION}
        else:
            if node.method != "sft" and plan.recipe(node.name).mask_stop_labels:
                raise HarnessError(f"{plan.path or plan.name}: node {node.name!r}: mask_stop_labels is an SFT control "
                                   f"(the SFT collator's stop labels); method {node.method!r} does not honour it")
            inp = {"method": node.method, "dataset": node.dataset,
                   "records": selfgen_identity(plan, node) if node.dataset == SELFGEN
                   else data.records_hash(node_records(plan, node.name)),
                   "recipe": recipe_key(plan.recipe(node.name)), "lora": dataclasses.asdict(plan.lora),
                   "quantize_4bit": quant, "parent": keys[node.parent], "seed": plan.seed, "device": device,
                   "versions": versions, "recipe_version": RECIPE_VERSION}
        inputs[node.name] = inp
        keys[node.name] = cache_key(inp)
    return keys, inputs


def recipe_key(recipe: Any) -> dict:
    """The recipe as hashed: options added later enter only when set away from their default."""
    d = dataclasses.asdict(recipe)
    if d.get("gradient_checkpointing") == "auto":
        del d["gradient_checkpointing"]
    if d.get("gpus") == 1:  # a node trained over N > 1 GPUs (DDP) is another realisation: its own key
        del d["gpus"]
    for option in ("compile", "precompute_ref_batch_size", "mask_stop_labels"):  # off (False / 0) by default
        if not d.get(option):
            d.pop(option, None)
    return d
