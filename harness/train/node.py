"""Build ONE node of a plan, flat: lock → setup → train → save → post-flight (the saved folder read back,
:mod:`harness.train.postflight`). The in-process build and the spawned
build workers both call :func:`locked_build`; the worker gets everything it needs as arguments.

``graph`` is the :class:`harness.train.graph.Graph` being built (it pickles to a worker): its ``plan``,
``store``, ``device``, and ``key(name)`` / ``path(name)`` of every node.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.train import common, methods
from harness.train.gpus import worker_info
from harness.train.keys import node_records, tiny_texts
from harness.train.plan import SELFGEN
from harness.train.selfgen_node import selfgen_records
from harness.train.store import META_FILE, library_versions


def locked_build(graph: Any, name: str, key_inputs: dict, forced: bool, progress: bool,
                 check: dict | None = None, slot: str | None = None, gpu_ids: Sequence[str] = ()) -> bool:
    """Build ``name`` under its lock unless it is complete; True when this call trained it.

    ``check`` is the node's pre-flight (None: run it here, once the parent's tokenizer exists); ``slot`` is
    the device slot this process is pinned to (recorded in the meta); ``gpu_ids`` are the GPUs a
    multi-GPU node launches on (default: the first ``gpus`` visible ones)."""
    key = graph.key(name)
    with graph.store.lock(name, key):
        # Another process may have built it while this one waited for the lock.
        if forced or not graph.store.is_complete(name, key):
            build_node(graph, name, key_inputs, progress, check, slot, gpu_ids)
            return True
    return False


#: One piece of after-work: the graph, the node's name, and the picklable callable run as ``fn(graph, name)``
#: once the node exists (:class:`harness.train.graph.BuildRequest`'s ``after``).
After = tuple[Any, str, Callable[[Any, str], Any]]


@dataclass(frozen=True)
class UnitResult:
    """What a build worker's task did: whether it trained its node, and for each piece of after-work it ran
    (in the order given) its seconds and its error (None: it went through)."""

    trained: bool
    after: tuple[tuple[float, str | None], ...] = ()


def run_after(afters: Sequence[After]) -> tuple[tuple[float, str | None], ...]:
    """Run each ``fn(graph, name)`` of ``afters``; a failure is no build failure: it is said on stderr (the
    worker's log) with the node's name and the next one runs."""
    out = []
    for graph, name, fn in afters:
        t0 = time.perf_counter()
        error = None
        try:
            fn(graph, name)
        except Exception as exc:  # noqa: BLE001 - the work is redone (and its error raised) by whoever reads it
            error = f"{type(exc).__name__}: {exc}"
            print(f"after-work of node {name!r} ({graph.plan.name}"
                  f"{' [' + graph.plan.variant_name + ']' if graph.plan.variant_name else ''}) failed; "
                  f"its reader computes it again:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        out.append((round(time.perf_counter() - t0, 3), error))
    return tuple(out)


def run_unit(graph: Any, name: str, key_inputs: dict, forced: bool, progress: bool, check: dict | None = None,
             slot: str | None = None, gpu_ids: Sequence[str] = (), afters: Sequence[After] = (),
             train: bool = True) -> UnitResult:
    """One unit of a build: :func:`locked_build` (unless ``train`` is False: a node already built, here only
    for its after-work), then its ``afters`` in the same process."""
    trained = locked_build(graph, name, key_inputs, forced, progress, check, slot, gpu_ids) if train else False
    return UnitResult(trained, run_after(afters))


def build_node(graph: Any, name: str, key_inputs: dict, progress: bool, check: dict | None = None,
               slot: str | None = None, gpu_ids: Sequence[str] = ()) -> Path:
    """Build one node in a temp folder and rename it into place; on an error the temp folder goes."""
    node = graph.plan.node(name)
    if check is None and node.method != "base":  # a tiny base: its tokenizer exists now
        from harness.train.preflight import preflight_nodes

        check = preflight_nodes(graph.plan, [name], graph.path(node.parent))[name]
    tmp = graph.store.new_tmp(name, graph.key(name))
    try:
        return _build_in(graph, name, key_inputs, progress, tmp, check, slot, gpu_ids)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_in(graph: Any, name: str, key_inputs: dict, progress: bool, tmp: Path, check: dict | None,
              slot: str | None, gpu_ids: Sequence[str]) -> Path:
    from harness import data

    plan, store, device = graph.plan, graph.store, graph.device
    node, key = plan.node(name), graph.key(name)
    t0 = time.perf_counter()
    at: dict[str, float] = {}  # seconds from the node's start to the end of each phase

    def lap(phase: str) -> None:
        at[phase] = round(time.perf_counter() - t0, 3)

    meta: dict[str, Any] = {"started_unix": time.time(), "node": name, "plan": plan.name,
                            "variant": plan.variant_name, "key": key, "method": node.method, "dataset": node.dataset,
                            "parent": node.parent, "device": device, "host": platform.node(), "pid": os.getpid(),
                            "inputs": key_inputs}
    meta["worker"] = worker_info(slot)
    if node.method == "base":
        log = _make_tiny_base(plan, tmp, key_inputs, meta, device, progress)
    else:
        method = methods.get(node.method)
        parent_dir = graph.path(node.parent)
        tokenizer = common.load_tokenizer(parent_dir)
        lap("parent_tokenizer")
        meta["preflight"] = check
        if node.dataset == SELFGEN:
            records = selfgen_records(graph, name, tmp, meta)
            if check and check.get("status") == "at-build":
                from harness.train import preflight

                meta["preflight"] = preflight.run(name, node.method, tokenizer, parent_dir, records,
                                                  plan.recipe(name).max_length, plan.preflight_allow,
                                                  f"{plan.path or plan.name}: ").to_dict()
        else:
            records = node_records(plan, name)
        train = method.train_function()
        from harness.train import distributed

        lap("imports")
        if distributed.gpus_of(plan.recipe(name)) > 1:  # DDP over several GPUs: accelerate launch
            meta["worker"]["launch"] = distributed.train(parent_dir, node.method, records, plan, name, tmp, device,
                                                         gpu_ids)
        else:
            train(parent_dir, tokenizer, records, plan.recipe(name), tmp, device, lora=plan.lora,
                  quantize_4bit=plan.quantize_4bit, seed=plan.seed, progress=progress, lean=plan.lean_steps)
        lap("trained")
        shutil.rmtree(tmp / "_trainer", ignore_errors=True)
        log = json.loads((tmp / common.LOG_FILE).read_text(encoding="utf-8"))
        meta["data_hashes"] = {node.dataset: data.records_hash(records)}
        meta["n_records"] = len(records)
        meta["quantize_4bit"] = common.uses_4bit(device, plan.quantize_4bit)
        meta["train"] = json.loads((tmp / common.SUMMARY_FILE).read_text(encoding="utf-8"))
        meta["postflight"] = _postflight(graph, name, tmp, parent_dir, check)
        lap("postflight")
    from harness.train.plots import plot_log

    plot_log(log, tmp / "curves.png", f"{plan.name}: {name}")
    lap("plotted")
    meta["timeline_s"] = at
    meta["versions"] = library_versions(common.uses_4bit(device, plan.quantize_4bit))
    meta["wall_seconds"] = round(time.perf_counter() - t0, 3)
    common.write_json(tmp / META_FILE, meta)  # last: its presence marks the node complete
    return store.commit(tmp, name, key)


def _postflight(graph: Any, name: str, saved: Path, parent_dir: Path, check: dict | None) -> dict:
    """The saved folder read back against the graph's base (:mod:`harness.train.postflight`); an error
    fails the node, unless it was built with ``--no-preflight`` (then it is only recorded)."""
    from harness.train import postflight

    plan = graph.plan
    base = graph.path(plan.nodes[0].name)
    if check is not None and check.get("status") == "skipped":
        return postflight.check(name, saved, base, parent_dir, plan.preflight_allow).to_dict()
    return postflight.run(name, saved, base, parent_dir, plan.preflight_allow, f"{plan.path or plan.name}: ").to_dict()


def _make_tiny_base(plan: Any, tmp: Path, key_inputs: dict, meta: dict, device: str, progress: bool) -> list[dict]:
    """The tiny base: tokenizer and Llama made and pretrained into ``tmp``; returns the pretraining log."""
    from harness.train.tiny import build_tiny_base

    texts, tok_texts = tiny_texts(plan.data_dir)
    log = build_tiny_base(tmp, texts, tok_texts, plan.tiny, device=device, progress=progress)
    common.write_json(tmp / common.LOG_FILE, log)
    meta["params"] = count_params(tmp)
    meta["data_hashes"] = {"pretrain_texts": key_inputs["base"]["pretrain_texts"]}
    meta["pretrain_final_loss"] = log[-1].get("window_mean_loss", log[-1]["loss"])
    meta["pretrain_final_eval_loss"] = next((r["eval_loss"] for r in reversed(log) if "eval_loss" in r), None)
    meta["pretrain_steps"] = len(log)
    return log


def count_params(model_dir: Path) -> int:
    """Parameters in a folder's safetensors files."""
    from safetensors import safe_open

    n = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                size = 1
                for s in st.get_slice(k).get_shape():
                    size *= s
                n += size
    return n
