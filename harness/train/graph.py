"""Walk a plan's node graph, parents first, building each missing node into the cache."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.errors import HarnessError
from harness.train import common
from harness.train.plan import SELFGEN, Plan
from harness.train.selfgen_node import SELFGEN_FILE, selfgen_identity, selfgen_records
from harness.train.store import META_FILE, Store, cache_key, library_versions

#: Bump when a recipe's code changes what it produces; part of every key.
RECIPE_VERSION = 1


class Graph:
    """A built (or partly built, with ``only``) fixture graph."""

    def __init__(self, plan: Plan, store: Store, keys: dict[str, str], device: str, base_dir: Path | None) -> None:
        self.plan, self.store, self.device = plan, store, device
        self._keys = keys
        self._base_dir = base_dir
        self.trained: list[str] = []  # nodes this build trained (not found complete, not built by another)
        self.timeline: dict[str, float] = {}  # seconds the build spent on: base, preflight, nodes, total

    def describe_timeline(self) -> str:
        """One line: where the build's wall time went (empty when nothing was built)."""
        t = self.timeline
        if "nodes" not in t:
            return ""
        return (f"build {t['total']:.1f} s: base ready {t['base']:.1f} s, pre-flight {t['preflight']:.1f} s, "
                f"nodes {t['nodes']:.1f} s")

    @property
    def names(self) -> tuple[str, ...]:
        return self.plan.names

    @property
    def fixtures_dir(self) -> Path:
        return self.store.root

    def key(self, name: str) -> str:
        self.plan.node(name)
        return self._keys[name]

    def path(self, name: str) -> Path:
        """The node's merged checkpoint folder (for a hub or path base: that model's folder)."""
        if name == self.plan.nodes[0].name and self._base_dir is not None:
            return self._base_dir
        return self.store.node_dir(name, self.key(name))

    def adapter_path(self, name: str) -> Path:
        if self.plan.node(name).method == "base":
            raise HarnessError(f"node {name!r} is the base; it has no adapter")
        return self.path(name) / common.ADAPTER_DIR

    def is_built(self, name: str) -> bool:
        return (self.path(name) / "config.json").is_file()

    def log(self, name: str) -> list[dict]:
        """The training log (for the tiny base: the pretraining curve); [] for a hub base."""
        p = self.store.node_dir(name, self.key(name)) / common.LOG_FILE
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else []

    def meta(self, name: str) -> dict:
        p = self.store.node_dir(name, self.key(name)) / META_FILE
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
        return {"node": name, "key": self.key(name), "path": str(self.path(name))}

    def plot_path(self, name: str) -> Path:
        return self.store.node_dir(name, self.key(name)) / "curves.png"

    def __repr__(self) -> str:
        return f"Graph({self.plan.name!r}, {len(self.names)} nodes, {self.store.root})"


# ---------------------------------------------------------------------------- keys and data

def _tiny_texts(folder: Path | None = None) -> tuple[list[str], list[str]]:
    """Pretraining texts, and the tokenizer's texts (those plus the rendered persona chats), of ``folder``'s data."""
    from harness import data

    texts = data.pretrain_texts(folder)
    sys_prompt = data.system_prompt(folder)
    chats = [f"{sys_prompt}\n{i.prompt}\n{r}" for i in data.load_persona(folder) for r in (i.d0, i.d1)]
    return texts, texts + chats


def _resolve_base(plan: Plan, store: Store | None = None, progress: bool = False) -> tuple[Path | None, dict]:
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
    if node.source:  # the node's own JSONL file (harness.userdata); the key hashes its records
        from harness.userdata import Source, load_records

        src = Source(Path(node.source["path"]), node.source.get("format"), node.source["chosen"],
                     node.source["rejected"])
        recs = load_records(src, node.method, data.system_prompt(plan.data_dir))
    elif node.method == "sft":
        recs = data.sft_records(node.dataset, seed=plan.data_seed, folder=plan.data_dir)
    else:
        recs = data.dpo_records(node.dataset, seed=plan.data_seed, folder=plan.data_dir)
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
                texts, tok_texts = _tiny_texts(plan.data_dir)
                tiny = dataclasses.asdict(plan.tiny)
                if tiny["dtype"] == "float32":  # the default before the field existed: keys stay as they were
                    del tiny["dtype"]
                base_identity = {"kind": "tiny", "tiny": tiny,
                                 "pretrain_texts": data.records_hash(texts),
                                 "tokenizer_texts": data.records_hash(tok_texts),
                                 "device": device, "versions": versions}
            inp = {"base": base_identity, "recipe_version": RECIPE_VERSION}
        else:
            inp = {"method": node.method, "dataset": node.dataset,
                   "records": selfgen_identity(plan, node) if node.dataset == SELFGEN
                   else data.records_hash(node_records(plan, node.name)),
                   "recipe": _recipe_key(plan.recipe(node.name)), "lora": dataclasses.asdict(plan.lora),
                   "quantize_4bit": quant, "parent": keys[node.parent], "seed": plan.seed, "device": device,
                   "versions": versions, "recipe_version": RECIPE_VERSION}
        inputs[node.name] = inp
        keys[node.name] = cache_key(inp)
    return keys, inputs


def _recipe_key(recipe: Any) -> dict:
    """The recipe as hashed: options added later enter only when set away from their default."""
    d = dataclasses.asdict(recipe)
    if d.get("gradient_checkpointing") == "auto":
        del d["gradient_checkpointing"]
    if d.get("gpus") == 1:  # a node trained over N > 1 GPUs (DDP) is another realisation: its own key
        del d["gpus"]
    for option in ("compile", "precompute_ref_batch_size"):  # off (False / 0) by default
        if not d.get(option):
            d.pop(option, None)
    return d


# ---------------------------------------------------------------------------- the walk

def default_jobs(device: str, base_dir: Path | None = None) -> int:
    """Nodes built at once by default: one on a CPU (each worker pays ~20 s of imports, which small CPUs
    do not win back); on CUDA several per GPU while memory allows (:func:`harness.train.devices.make_slots`)."""
    from harness.train.devices import make_slots

    return sum(s.capacity for s in make_slots(device, None, base_dir))


def build(plan: Plan, *, fixtures_dir: str | Path | None = None, device: str = "auto",
          only: str | Iterable[str] | None = None, rebuild: bool = False, progress: bool = True,
          jobs: int | None = None, preflight: bool = True, devices: str | Iterable[str] | None = None,
          on_node: Callable[[str, str], None] | None = None) -> Graph:
    """Build every missing node of ``plan`` (or ``only`` those nodes and their ancestors).

    ``rebuild`` retrains the named nodes (``only``) or, without ``only``, every trained node.
    ``jobs`` nodes whose parents are done train at once in worker processes (default: see
    :func:`default_jobs`; 1 builds in this process with per-trainer progress bars).
    ``preflight`` audits every node's training setup before it trains (see
    :mod:`harness.train.preflight`); an error stops the build before any training.
    ``devices`` (default ``$HARNESS_DEVICES``, else every visible GPU) are the slots nodes are spread
    over, one worker pool pinned to each (see :mod:`harness.train.devices`).
    ``on_node(name, event)`` is called in this process as each missing node starts (``"start"``) and
    ends (``"built"``, or ``"found"`` when another builder had built it meanwhile).
    Returns the :class:`Graph`; cached nodes cost nothing but hashing.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    device = common.resolve_device(device)
    if plan.requires_cuda and device != "cuda":
        raise HarnessError(f"{plan.path or plan.name}: base.requires_cuda is true but the device is {device}")
    store = Store(fixtures_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_stale_tmp()
    base_dir, base_identity = (None, None) if plan.base == "tiny" else _resolve_base(plan, store, progress)
    keys, inputs = plan_keys(plan, device, base_identity)
    graph = Graph(plan, store, keys, device, base_dir)
    graph.timeline["base"] = time.perf_counter() - t0

    wanted_names = [only] if isinstance(only, str) else list(only) if only is not None else list(plan.names)
    wanted: set[str] = set()
    for name in wanted_names:
        wanted.update(plan.ancestors(name))
    forced = set(wanted_names) if (rebuild and only is not None) else (set(plan.names) if rebuild else set())
    todo = [n.name for n in plan.nodes if n.name in wanted
            and not (n.method == "base" and base_dir is not None)
            and (n.name in forced or not store.is_complete(n.name, keys[n.name]))]
    if not todo:
        return graph
    from harness.train import devices as slots_of

    slots = slots_of.make_slots(device, jobs, graph.path(plan.nodes[0].name) if base_dir else None, devices)
    jobs = min(sum(s.capacity for s in slots), len(todo))
    here = (jobs == 1 and len(slots) == 1 and slots_of.is_here(slots[0], device)
            and not slots_of.needs_launch(plan, todo))
    pools = None if here else slots_of.open_pools(slots, len(todo))  # workers warm up during the pre-flight
    checks: dict[str, dict | None] = {n: None for n in todo}
    try:
        if preflight and base_dir is not None:  # before any training: every node against the base's tokenizer
            checks.update(preflight_nodes(graph, [n for n in todo if plan.node(n).method != "base"], base_dir))
        elif not preflight:
            checks = {n: {"status": "skipped", "reason": "--no-preflight"} for n in todo}
    except BaseException:
        if pools is not None:
            slots_of.close_pools(pools)
        raise
    graph.timeline["preflight"] = time.perf_counter() - t0 - graph.timeline["base"]
    bar = tqdm(total=len(todo), desc=f"fixtures {plan.name}", unit="node", disable=not progress)
    tell = on_node or (lambda name, event: None)
    if here:
        slots_of.choose_threads(1)
        for name in todo:
            bar.set_postfix(node=name)
            tell(name, "start")
            trained = _locked_build(graph, name, inputs[name], name in forced, progress, checks[name])
            if trained:
                graph.trained.append(name)
            tell(name, "built" if trained else "found")
            bar.update()
    else:
        done = slots_of.build_on_slots(graph, todo, inputs, forced, slots, bar, checks, tell, pools)
        graph.trained += [a.node for a in done if a.trained]
    bar.close()
    graph.timeline["total"] = time.perf_counter() - t0
    graph.timeline["nodes"] = graph.timeline["total"] - graph.timeline["base"] - graph.timeline["preflight"]
    return graph


def preflight_nodes(graph: Graph, names: list[str], tok_dir: Path) -> dict[str, dict]:
    """Pre-flight ``names`` (trained nodes) with the tokenizer in ``tok_dir``; raises on the first error."""
    from harness import data
    from harness.train import preflight

    tok = _load_tokenizer(tok_dir)
    where = f"{graph.plan.path or graph.plan.name}: "
    out: dict[str, dict] = {}
    done: dict[tuple, dict] = {}  # one audit per (method, records, max_length): DPO on d0 after any parent
    for name in names:
        node = graph.plan.node(name)
        if node.dataset == SELFGEN:  # its records exist only once its parent has generated them
            out[name] = {"status": "at-build", "reason": "selfgen records are audited when they are made"}
            continue
        records, max_length = node_records(graph.plan, name), graph.plan.recipe(name).max_length
        key = (node.method, data.records_hash(records), max_length)
        if key not in done:
            done[key] = preflight.run(name, node.method, tok, tok_dir, records, max_length,
                                      graph.plan.preflight_allow, where).to_dict()
        out[name] = {**done[key], "node": name}
    return out


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _locked_build(graph: Graph, name: str, key_inputs: dict, forced: bool, progress: bool,
                  check: dict | None = None) -> bool:
    """Build ``name`` under its lock unless it is complete; True when this call trained it."""
    key = graph.key(name)
    with graph.store.lock(name, key):
        # Another process may have built it while this one waited for the lock.
        if forced or not graph.store.is_complete(name, key):
            _build_node(graph, name, key_inputs, progress, check)
            return True
    return False


def _build_node(graph: Graph, name: str, key_inputs: dict, progress: bool, check: dict | None = None) -> Path:
    """Build one node in a temp folder and rename it into place; on an error the temp folder goes."""
    if check is None and graph.plan.node(name).method != "base":  # a tiny base: its tokenizer exists now
        check = preflight_nodes(graph, [name], graph.path(graph.plan.node(name).parent))[name]
    tmp = graph.store.new_tmp(name, graph.key(name))
    try:
        return _build_node_in(graph, name, key_inputs, progress, tmp, check)
    except BaseException:
        shutil_rm(tmp)
        raise


def _build_node_in(graph: Graph, name: str, key_inputs: dict, progress: bool, tmp: Path,
                   check: dict | None = None) -> Path:
    from harness import data

    plan, store, device = graph.plan, graph.store, graph.device
    node, key = plan.node(name), graph.key(name)
    t0 = time.perf_counter()
    at: dict[str, float] = {}  # seconds from the node's start to the end of each phase

    def lap(phase: str) -> None:
        at[phase] = round(time.perf_counter() - t0, 3)

    meta: dict[str, Any] = {"started_unix": time.time(), "node": name, "plan": plan.name,
                            "variant": plan.variant_name, "key": key, "method": node.method, "dataset": node.dataset, "parent": node.parent,
                            "device": device, "host": platform.node(), "pid": os.getpid(), "inputs": key_inputs}
    from harness.train.devices import worker_info

    meta["worker"] = worker_info()
    if node.method == "base":
        from harness.train.tiny import build_tiny_base

        texts, tok_texts = _tiny_texts(plan.data_dir)
        log = build_tiny_base(tmp, texts, tok_texts, plan.tiny, device=device, progress=progress)
        common.write_json(tmp / common.LOG_FILE, log)
        meta["params"] = _count_params(tmp)
        meta["data_hashes"] = {"pretrain_texts": key_inputs["base"]["pretrain_texts"]}
        meta["pretrain_final_loss"] = log[-1].get("window_mean_loss", log[-1]["loss"])
        meta["pretrain_final_eval_loss"] = next((r["eval_loss"] for r in reversed(log) if "eval_loss" in r), None)
        meta["pretrain_steps"] = len(log)
    else:
        parent_dir = graph.path(node.parent)
        tokenizer = _load_tokenizer(parent_dir)
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
        if node.method == "sft":
            from harness.train.sft import train_sft as train
        else:
            from harness.train.dpo import train_dpo as train
        from harness.train import distributed

        lap("imports")
        if distributed.gpus_of(plan.recipe(name)) > 1:  # DDP over several GPUs: accelerate launch
            meta["worker"]["launch"] = distributed.train(parent_dir, node.method, records, plan, name, tmp, device)
        else:
            train(parent_dir, tokenizer, records, plan.recipe(name), tmp, device, lora=plan.lora,
                  quantize_4bit=plan.quantize_4bit, seed=plan.seed, progress=progress)
        lap("trained")
        shutil_rm(tmp / "_trainer")
        log = json.loads((tmp / common.LOG_FILE).read_text(encoding="utf-8"))
        meta["data_hashes"] = {node.dataset: data.records_hash(records)}
        meta["n_records"] = len(records)
        meta["quantize_4bit"] = common.uses_4bit(device, plan.quantize_4bit)
        meta["train"] = json.loads((tmp / common.SUMMARY_FILE).read_text(encoding="utf-8"))
    from harness.train.plots import plot_log

    plot_log(log, tmp / "curves.png", f"{plan.name}: {name}")
    lap("plotted")
    meta["timeline_s"] = at
    meta["versions"] = library_versions(common.uses_4bit(device, plan.quantize_4bit))
    meta["wall_seconds"] = round(time.perf_counter() - t0, 3)
    common.write_json(tmp / META_FILE, meta)  # last: its presence marks the node complete
    return store.commit(tmp, name, key)


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _count_params(model_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                size = 1
                for s in shape:
                    size *= s
                n += size
    return n
