"""Walk a plan's node graph, parents first, building each missing node into the cache."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from harness.errors import HarnessError, NodeError
from harness.train import common, devices as slots_of, methods
from harness.train.gpus import choose_threads
from harness.train.keys import plan_keys, resolve_base
from harness.train.node import run_unit
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
        self.after_s: dict[str, float] = {}  # seconds each node's after-work took (BuildRequest.after)
        self.after_errors: dict[str, str] = {}  # the after-work that failed: node -> its error

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


@dataclass
class BuildRequest:
    """One graph of a :func:`build_graphs` call: its plan, the nodes wanted (None: every node) and who hears of
    them (``on_node(name, event)``, ``on_error(name, error)``: see :func:`build`).

    ``after``: per node name, a picklable callable (a module-level function, or a ``functools.partial`` of one:
    the workers are spawned) the build runs as ``fn(graph, name)`` on a device slot once that node exists, as a
    task of its own that trains nothing: for a node it trains, once that node is trained (its children do not
    wait for it); for a node already complete (or a hub/path base) at once; either started when a slot is free
    and no training unit is ready (the lowest priority). On Ray, a leaf node's runs in its own task. Its failure is no build failure: the worker's log says it
    with the node's name, and whoever needs the work does it again. Its seconds go into ``Graph.after_s``."""

    plan: Plan
    only: str | Iterable[str] | None = None
    on_node: Callable[[str, str], None] | None = None
    on_error: Callable[[str, BaseException], None] | None = None
    after: Mapping[str, Callable[[Any, str], Any]] = field(default_factory=dict)
    # on_graph(graph, todo, here): called in this process before any training, with the graph (its keys and
    # paths), the nodes the build trains and whether they train in this process (the claims session computes
    # weight diffs beside the build, harness.findings.diffahead)
    on_graph: Callable[[Graph, list[str], bool], None] | None = None


@dataclass
class _Prepared:
    """A graph with its keys and the nodes this build trains (``todo``), before any training."""

    request: BuildRequest
    graph: Graph
    todo: list[str]
    inputs: dict
    forced: set[str]
    base_dir: Path | None
    checks: dict = field(default_factory=dict)

    def tell(self, name: str, event: str) -> None:
        if self.request.on_node is not None:
            self.request.on_node(name, event)

    def failed(self, name: str, error: BaseException) -> None:
        if self.request.on_error is not None:
            self.request.on_error(name, error)


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
    return build_graphs([BuildRequest(plan, only, on_node, on_error)], fixtures_dir=fixtures_dir, device=device,
                        rebuild=rebuild, progress=progress, jobs=jobs, preflight=preflight, devices=devices,
                        worker_log=worker_log, executor=executor, ray_address=ray_address,
                        gpu_fraction=gpu_fraction)[0]


def build_graphs(requests: Sequence[BuildRequest], *, fixtures_dir: str | Path | None = None, device: str = "auto",
                 rebuild: bool = False, progress: bool = True, jobs: int | None = None, preflight: bool = True,
                 devices: str | Iterable[str] | None = None, worker_log: str | Path | None = None,
                 executor: str = "embedded", ray_address: str | None = None,
                 gpu_fraction: float | None = None) -> list[Graph]:
    """:func:`build` for several graphs at once (a plan and its variants, or its training seeds): one scheduler
    over the nodes of all of them, so a variant's node trains in the same wave as the plan's nodes instead of
    after the whole graph. A node two graphs share (the same name and key, e.g. the base of a variant that does
    not change it) trains once. Each graph is resolved and pre-flighted before any training; an error stops
    every graph (the first node error raised once the running nodes end, as :func:`build`). Each graph's
    timeline has its own base and pre-flight, and the shared training wall as its ``nodes``. The same holds
    for Ray (one task per node, over every graph). Returns the graphs in the order asked."""
    from tqdm.auto import tqdm

    from harness.train.ray_executor import check_executor

    check_executor(executor, ray_address)
    on_ray = executor == "ray"
    if on_ray and (jobs is not None or devices is not None):
        raise HarnessError("--jobs and --devices set the embedded executor's workers; with --executor ray, Ray "
                           "places the nodes by the resources they ask for")
    device = common.resolve_device(device)
    store = Store(fixtures_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_stale_tmp()
    preps = [_prepare(r, store, device, rebuild, progress) for r in requests]
    work = [p for p in preps if p.todo or _after_only(p)]
    if not work:
        _on_graph(preps, False)
        return [p.graph for p in preps]
    units, followers = _units(work)
    if on_ray:  # Ray runs a trained node's after-work in its task when no child waits on it (build_with_ray)
        units = _ray_units(units)
        if not units:
            _on_graph(preps, False)
            return [p.graph for p in preps]

    def tell(u: slots_of.Unit, event: str) -> None:  # a node's followers in other graphs are found as it ends
        work[u.graph_index].tell(u.name, event)
        if event != "start":
            for p, name in followers.get((u.graph_index, u.name), ()):
                p.tell(name, "found")

    first_base = next((p.graph.path(p.graph.plan.nodes[0].name) for p in work if p.base_dir is not None), None)
    slots = [slots_of.Slot("", 1)] if on_ray else slots_of.make_slots(device, jobs, first_base, devices)
    jobs = min(sum(s.capacity for s in slots), len(units))
    here = (not on_ray and jobs == 1 and len(slots) == 1 and slots_of.is_here(slots[0], device)
            and not any(slots_of.needs_launch(p.graph.plan, p.todo) for p in work))
    _on_graph(preps, here)
    # the embedded workers warm up during the pre-flight
    pools = None if here or on_ray else slots_of.open_pools(slots, len(units), worker_log)
    for p in work:
        t = time.perf_counter()
        p.checks = {n: None for n in p.todo}
        try:
            if preflight and p.base_dir is not None:  # before any training: every node against the base's tokenizer
                p.checks.update(preflight_nodes(p.graph.plan, [n for n in p.todo if p.graph.plan.node(n).method != "base"],
                                                p.base_dir))
            elif not preflight:
                p.checks = {n: {"status": "skipped", "reason": "--no-preflight"} for n in p.todo}
        except BaseException as exc:
            if pools is not None:
                slots_of.close_pools(pools)
            if isinstance(exc, NodeError) and exc.node is not None:
                p.failed(exc.node, exc)
            raise
        p.graph.timeline["preflight"] = time.perf_counter() - t
    units = [dataclasses.replace(u, check=work[u.graph_index].checks[u.name]) if u.train else u for u in units]
    t_nodes = time.perf_counter()
    desc = f"fixtures {work[0].graph.plan.name}" + (f" (+{len(work) - 1} graphs)" if len(work) > 1 else "")
    bar = tqdm(total=sum(u.train for u in units), desc=desc, unit="node", disable=not progress)
    try:
        if on_ray:
            from harness.train.ray_executor import build_with_ray

            for i in build_with_ray(units, bar, tell,
                                    lambda u, exc: work[u.graph_index].failed(u.name, exc), address=ray_address,
                                    gpu_fraction=gpu_fraction, worker_log=worker_log,
                                    on_result=lambda u, r: _heard_after(u, r)):
                work[units[i].graph_index].graph.trained.append(units[i].name)
        elif here:
            choose_threads(1)
            for u in units:  # the units that only run after-work come last
                p = work[u.graph_index]
                bar.set_postfix(node=u.label())
                if u.train:
                    tell(u, "start")
                try:
                    result = run_unit(p.graph, u.name, u.inputs, u.forced, progress, u.check, slots[0].id or None,
                                      (), u.afters, u.train)
                except Exception as exc:  # an interrupt is no node's failure
                    p.failed(u.name, exc)
                    raise
                _heard_after(u, result)
                if not u.train:
                    continue
                if result.trained:
                    p.graph.trained.append(u.name)
                tell(u, "built" if result.trained else "found")
                bar.update()
        else:
            done = slots_of.build_on_slots(units, slots, bar, pools, worker_log=worker_log,
                                           tell=tell,
                                           on_error=lambda u, exc: work[u.graph_index].failed(u.name, exc))
            for a in done:
                if a.result is not None:
                    _heard_after(units[a.node], a.result)
                if a.trained and units[a.node].train:
                    work[units[a.node].graph_index].graph.trained.append(units[a.node].name)
    finally:
        bar.close()
    nodes_s = time.perf_counter() - t_nodes
    for p in work:
        t = p.graph.timeline
        t["nodes"] = nodes_s
        t["total"] = t["base"] + t["preflight"] + nodes_s
    return [p.graph for p in preps]


def _on_graph(preps: Sequence[_Prepared], here: bool) -> None:
    for p in preps:
        if p.request.on_graph is not None:
            p.request.on_graph(p.graph, list(p.todo), here)


def _prepare(request: BuildRequest, store: Store, device: str, rebuild: bool, progress: bool) -> _Prepared:
    """Resolve ``request``'s base and keys and list the nodes to train (parents first)."""
    t0 = time.perf_counter()
    plan, only = request.plan, request.only
    if plan.requires_cuda and device != "cuda":
        raise HarnessError(f"{plan.path or plan.name}: base.requires_cuda is true but the device is {device}")
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
    for name in todo:
        node = plan.node(name)
        if node.method != "base" and not methods.get(node.method).ddp and plan.recipe(name).gpus > 1:
            raise HarnessError(f"{plan.path or plan.name}: node {name!r}: gpus = {plan.recipe(name).gpus}, but "
                               f"method {node.method!r} does not train over several GPUs; set gpus = 1 for it")
    return _Prepared(request, graph, todo, inputs, forced, base_dir)


def _after_only(p: _Prepared) -> list[str]:
    """The nodes of ``p`` with after-work that ``p`` does not train: built already (or a hub/path base)."""
    return [n for n in p.graph.plan.names
            if n in p.request.after and n not in p.todo and p.graph.is_built(n)]


def _ray_units(units: Sequence[slots_of.Unit]) -> list[slots_of.Unit]:
    """The training units for Ray (a task per node, its children's tasks waiting on its result): a leaf node's
    after-work goes into its own task; the after-work of a node with children in the build, and of nodes already
    built, is left to whoever reads it, so that no child waits for its parent's after-work."""
    train = [u for u in units if u.train]
    parents = {u.parent for u in train if u.parent is not None}
    for u in units:
        if not u.train and u.parent is not None and u.parent not in parents:
            train[u.parent] = dataclasses.replace(train[u.parent], afters=u.afters)
    return train


def _heard_after(u: slots_of.Unit, result: Any) -> None:
    """A unit's after-work seconds (and errors) into the graphs they belong to."""
    for (graph, name, _), (seconds, error) in zip(u.afters, getattr(result, "after", ()) or ()):
        graph.after_s[name] = graph.after_s.get(name, 0.0) + seconds
        if error is not None:
            graph.after_errors[name] = error


def _units(work: Sequence[_Prepared]) -> tuple[list[slots_of.Unit], dict[tuple[int, str], list[tuple[_Prepared, str]]]]:
    """One unit per node to train over all graphs, parents first, each waiting for its parent's unit; a node
    an earlier graph trains too (same name and key) is not a unit of its own but a follower of that one
    (``followers``: the leader's (graph index, name) -> the graphs and names that follow it). After the training
    units come the units that only run after-work: one per trained node that has some (its work in every graph
    that trains or follows it), waiting for that node's unit, so the node's children start as soon as it is
    trained, not after its after-work; then one per node already built (one per name and key, over all graphs)."""
    afters: list[list] = []
    args: list[tuple] = []
    at: dict[tuple[str, str], int] = {}  # (name, key) -> its unit
    followers: dict[tuple[int, str], list[tuple[_Prepared, str]]] = {}
    for i, p in enumerate(work):
        for name in p.todo:
            key = p.graph.key(name)
            own = [(p.graph, name, p.request.after[name])] if name in p.request.after else []
            if (name, key) in at and name not in p.forced:
                leader = at[(name, key)]
                followers.setdefault((args[leader][6], name), []).append((p, name))
                afters[leader] += own
                continue
            parent = p.graph.plan.node(name).parent
            wait = at.get((parent, p.graph.key(parent))) if parent is not None and parent in p.todo else None
            at[(name, key)] = len(args)
            args.append((p.graph, name, p.inputs[name], name in p.forced, None, wait, i))
            afters.append(own)
    units = [slots_of.Unit(*a) for a in args]
    units += [slots_of.Unit(a[0], a[1], {}, False, None, i, a[6], afters=tuple(w), train=False)
              for i, (a, w) in enumerate(zip(args, afters)) if w]
    only: dict[tuple[str, str], int] = {}
    for i, p in enumerate(work):
        for name in _after_only(p):
            work_ = (p.graph, name, p.request.after[name])
            key = (name, p.graph.key(name))
            if key in only:
                u = units[only[key]]
                units[only[key]] = dataclasses.replace(u, afters=u.afters + (work_,))
                continue
            only[key] = len(units)
            units.append(slots_of.Unit(p.graph, name, {}, False, None, None, i, afters=(work_,), train=False))
    return units, followers
