"""Walk a plan's node graph, parents first, building each missing node into the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

from harness.errors import HarnessError, NodeError
from harness.train import common, devices as slots_of, methods
from harness.train.gpus import choose_threads
from harness.train.keys import plan_keys, resolve_base
from harness.train.node import locked_build
from harness.train.plan import Plan
from harness.train.preflight import preflight_nodes
from harness.train.store import META_FILE, Store


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


# ---------------------------------------------------------------------------- the walk

def default_jobs(device: str, base_dir: Path | None = None) -> int:
    """Nodes built at once by default: one on a CPU (each worker pays ~20 s of imports, which small CPUs
    do not win back); on CUDA several per GPU while memory allows (:func:`harness.train.devices.make_slots`)."""
    return sum(s.capacity for s in slots_of.make_slots(device, None, base_dir))


def build(plan: Plan, *, fixtures_dir: str | Path | None = None, device: str = "auto",
          only: str | Iterable[str] | None = None, rebuild: bool = False, progress: bool = True,
          jobs: int | None = None, preflight: bool = True, devices: str | Iterable[str] | None = None,
          on_node: Callable[[str, str], None] | None = None, worker_log: str | Path | None = None,
          on_error: Callable[[str, BaseException], None] | None = None, executor: str = "embedded",
          ray_address: str | None = None, gpu_fraction: float | None = None) -> Graph:
    """Build every missing node of ``plan`` (or ``only`` those nodes and their ancestors).

    ``rebuild`` retrains the named nodes (``only``) or, without ``only``, every trained node.
    ``jobs`` nodes whose parents are done train at once in worker processes (default: see
    :func:`default_jobs`; 1 builds in this process with per-trainer progress bars).
    ``preflight`` audits every node's training setup before it trains (see
    :mod:`harness.train.preflight`); an error stops the build before any training.
    ``devices`` (default: every visible GPU) are the slots nodes are spread over, one worker pool
    pinned to each (see :mod:`harness.train.devices`); ``worker_log`` is a file those workers write
    their output to (default: this process's stdout and stderr).
    ``fixtures_dir`` defaults to ``.fixtures/`` in the project (the CLI passes ``$HARNESS_FIXTURES_DIR``).
    ``on_node(name, event)`` is called in this process as each missing node starts (``"start"``) and
    ends (``"built"``, or ``"found"`` when another builder had built it meanwhile); ``on_error(name, error)``
    for each node whose pre-flight or training raised (the build then raises the first such error; an error
    ``on_error`` did not hear of belongs to no one node: the base, the keys, the plan).
    ``executor="ray"`` builds the nodes as Ray tasks instead (:mod:`harness.train.ray_executor`; ``ray_address``,
    ``gpu_fraction``), with the same keys, commits, events and errors; ``jobs`` and ``devices`` are the embedded
    executor's.
    Returns the :class:`Graph`; cached nodes cost nothing but hashing.
    """
    from tqdm.auto import tqdm

    from harness.train.ray_executor import check_executor

    check_executor(executor, ray_address)
    on_ray = executor == "ray"
    if on_ray and (jobs is not None or devices is not None):
        raise HarnessError("--jobs and --devices set the embedded executor's workers; with --executor ray, Ray "
                           "places the nodes by the resources they ask for")
    t0 = time.perf_counter()
    device = common.resolve_device(device)
    if plan.requires_cuda and device != "cuda":
        raise HarnessError(f"{plan.path or plan.name}: base.requires_cuda is true but the device is {device}")
    store = Store(fixtures_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_stale_tmp()
    base_dir, base_identity = (None, None) if plan.base == "tiny" else resolve_base(plan, store, progress)
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
    for name in todo:
        node = plan.node(name)
        if node.method != "base" and not methods.get(node.method).ddp and plan.recipe(name).gpus > 1:
            raise HarnessError(f"{plan.path or plan.name}: node {name!r}: gpus = {plan.recipe(name).gpus}, but "
                               f"method {node.method!r} does not train over several GPUs; set gpus = 1 for it")
    slots = [slots_of.Slot("", 1)] if on_ray else slots_of.make_slots(
        device, jobs, graph.path(plan.nodes[0].name) if base_dir else None, devices)
    jobs = min(sum(s.capacity for s in slots), len(todo))
    here = (not on_ray and jobs == 1 and len(slots) == 1 and slots_of.is_here(slots[0], device)
            and not slots_of.needs_launch(plan, todo))
    # the embedded workers warm up during the pre-flight
    pools = None if here or on_ray else slots_of.open_pools(slots, len(todo), worker_log)
    checks: dict[str, dict | None] = {n: None for n in todo}
    failed = on_error or (lambda name, error: None)
    try:
        if preflight and base_dir is not None:  # before any training: every node against the base's tokenizer
            checks.update(preflight_nodes(plan, [n for n in todo if plan.node(n).method != "base"], base_dir))
        elif not preflight:
            checks = {n: {"status": "skipped", "reason": "--no-preflight"} for n in todo}
    except BaseException as exc:
        if pools is not None:
            slots_of.close_pools(pools)
        if isinstance(exc, NodeError) and exc.node is not None:
            failed(exc.node, exc)
        raise
    graph.timeline["preflight"] = time.perf_counter() - t0 - graph.timeline["base"]
    bar = tqdm(total=len(todo), desc=f"fixtures {plan.name}", unit="node", disable=not progress)
    tell = on_node or (lambda name, event: None)
    if on_ray:
        from harness.train.ray_executor import build_with_ray

        graph.trained += build_with_ray(graph, todo, inputs, forced, checks, bar, tell, on_error, address=ray_address,
                                        gpu_fraction=gpu_fraction, worker_log=worker_log)
    elif here:
        choose_threads(1)
        for name in todo:
            bar.set_postfix(node=name)
            tell(name, "start")
            try:
                trained = locked_build(graph, name, inputs[name], name in forced, progress, checks[name],
                                       slots[0].id or None)
            except Exception as exc:  # an interrupt is no node's failure
                failed(name, exc)
                raise
            if trained:
                graph.trained.append(name)
            tell(name, "built" if trained else "found")
            bar.update()
    else:
        done = slots_of.build_on_slots(graph, todo, inputs, forced, slots, bar, checks, tell, pools,
                                       on_error=on_error)
        graph.trained += [a.node for a in done if a.trained]
    bar.close()
    graph.timeline["total"] = time.perf_counter() - t0
    graph.timeline["nodes"] = graph.timeline["total"] - graph.timeline["base"] - graph.timeline["preflight"]
    return graph
