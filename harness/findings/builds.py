"""The claims session's fixture graphs: the plan under each training seed and each negative control's
variant, built (or loaded from the cache) through :func:`harness.train.build`.

Before the first case runs, the session asks for every node the selected cases need in one build of all their
graphs (:func:`harness.train.graph.build_graphs`: the plan, its training seeds, its controls' variants over one
scheduler), so that nodes whose parents are done train at once over the device slots (several per GPU on
CUDA; one at a time on the CPU, where ``build``'s default is one job). Each node that trains gets a
line on the terminal as it starts and as it ends; the training output goes to the session's log.

A node that fails to build is recorded for the session (per graph: plan, variant, training seed, base):
every later ``build`` that needs it, or a node below it, raises :class:`NodeFailedError` at once with the
node's error and the log's path, and never builds it again. An error that belongs to no one node (the base
cannot be resolved, the plan's data cannot be read) is recorded for the whole graph.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from harness.errors import HarnessError
from harness.findings.preflight import NodePreflight, from_meta

GraphKey = tuple[str, str | None, int, str]


def graph_key(plan: Any) -> GraphKey:
    return (plan.name, plan.variant_name, plan.seed, plan.base)


def describe(plan: Any) -> str:
    """``tiny seed 0``, ``tiny [variant v] seed 0``: how the progress lines name a graph."""
    return f"{plan.name}" + (f" [variant {plan.variant_name}]" if plan.variant_name else "") + f" seed {plan.seed}"


@dataclass(frozen=True)
class Failure:
    """A node (None: the graph as a whole) that failed to build in this session, with its error."""

    graph: str  # as :func:`describe` names it
    node: str | None
    error: BaseException
    log_path: Path

    def describe(self) -> str:
        what = f"node {self.node}" if self.node else "the build"
        first = (str(self.error).strip().splitlines() or [""])[0]
        return f"{self.graph}: {what} failed: {type(self.error).__name__}: {first} (log: {self.log_path})"


class NodeFailedError(HarnessError):
    """A node a case needs failed to build earlier in this session (itself, an ancestor, or the whole graph);
    it is not built again. ``failure`` holds the original error (also this error's ``__cause__``)."""

    def __init__(self, wanted: str, failure: Failure) -> None:
        self.failure = failure
        if failure.node is None:
            why = "its graph failed to build"
        elif failure.node == wanted:
            why = "it failed to build"
        else:
            why = f"its ancestor {failure.node} failed to build"
        super().__init__(f"{failure.graph}: node {wanted}: {why} earlier in this session and is not retried: "
                         f"{type(failure.error).__name__}: {failure.error} (log: {failure.log_path})")


class Builds:
    """The graphs one session built, which of their nodes it asked for, and which failed."""

    def __init__(self, fixtures_dir: str | None, device: str, say: Callable[[str], None], log_path: Path,
                 devices: str | None = None, executor: str = "embedded", ray_address: str | None = None,
                 together: bool = True) -> None:
        self.fixtures_dir, self.device, self.say, self.log_path = fixtures_dir, device, say, log_path
        self.devices = devices  # the device slots nodes train on (HARNESS_DEVICES; default: the visible GPUs)
        self.executor, self.ray_address = executor, ray_address  # who trains them (harness.train.ray_executor)
        self.together = together  # build_all: one build of every graph (False: one graph after another)
        self.graphs: dict[GraphKey, Any] = {}
        self.asked: dict[GraphKey, set[str]] = {}
        self.calls: list[tuple[GraphKey, tuple[str, ...]]] = []  # every build() this session made: (graph, only)
        self.failed: dict[tuple[GraphKey, str | None], Failure] = {}  # (graph, node or None: the graph): failure
        self.timings: list[dict] = []  # every build that trained a node: its phases and nodes (findings.timing)
        # watch(request) -> request: who else hears of each graph and node of a build (the claims session's weight
        # diffs computed ahead, harness.findings.diffahead); None: no one
        self.watch: Callable[[Any], Any] | None = None

    def _todo(self, plan: Any, nodes: Iterable[str] | None) -> tuple[GraphKey, list[str]]:
        """The nodes of ``plan`` to ask the engine for (``nodes`` and their ancestors this session has not asked
        for yet); raises :class:`NodeFailedError` when one of them (or the graph) failed earlier."""
        wanted: set[str] = set()
        key = graph_key(plan)
        for n in (plan.names if nodes is None else nodes):
            ancestors = plan.ancestors(n)
            wanted.update(ancestors)
            failure = self.failed.get((key, None)) or next(
                (self.failed[(key, a)] for a in ancestors if (key, a) in self.failed), None)
            if failure is not None:
                raise NodeFailedError(n, failure) from failure.error
        asked = self.asked.setdefault(key, set())
        return key, [n for n in plan.names if n in wanted and n not in asked]

    def build(self, plan: Any, nodes: Iterable[str] | None = None) -> Any:
        """Build (or load) ``nodes`` of ``plan`` and their ancestors (default: every node) in one
        :func:`harness.train.build` call; returns the Graph. Raises :class:`NodeFailedError` at once, building
        nothing, when one of them (or the graph) failed earlier in the session; a build that fails records its
        failed nodes and raises their error."""
        key, todo = self._todo(plan, nodes)
        if not todo and key in self.graphs:
            return self.graphs[key]
        self._build_graphs([(plan, todo)])
        return self.graphs[key]

    def _build_graphs(self, asks: Sequence[tuple[Any, list[str]]], afters: Mapping[GraphKey, Mapping[str, Any]] | None = None) -> None:
        """One call into the graph engine for ``asks`` (``[(plan, nodes to ask for)]``, graphs not yet built
        count with their base): one scheduler over all their nodes, each graph's ``afters`` (node -> after-work,
        :class:`harness.train.graph.BuildRequest`) run as its nodes exist. A failure is recorded per node (or, for
        an error no node owns, per graph when there is one) and raised."""
        from harness.train.graph import BuildRequest, build_graphs

        failed: list[dict[str, BaseException]] = [{} for _ in asks]
        only = [tuple(todo) or (plan.names[0],) for plan, todo in asks]
        requests = [BuildRequest(plan, list(o), self._progress(describe(plan), todo),
                                 lambda name, error, f=f: f.setdefault(name, error),
                                 dict((afters or {}).get(graph_key(plan), {})))
                    for (plan, todo), o, f in zip(asks, only, failed)]
        for (plan, _), o in zip(asks, only):
            self.calls.append((graph_key(plan), o))
        if self.watch is not None:
            requests = [self.watch(r) for r in requests]
        try:
            with quiet(self.log_path):
                # the one call into the graph engine; the session's log path reaches the build's workers through
                # quiet() until harness.train.build takes it as an argument
                graphs = build_graphs(requests, fixtures_dir=self.fixtures_dir, device=self.device,
                                      devices=self.devices, progress=False, executor=self.executor,
                                      ray_address=self.ray_address, worker_log=self.log_path)
        except Exception as exc:  # an interrupt is not recorded: the next case may build
            owned = [(plan, name, error) for (plan, _), f in zip(asks, failed) for name, error in f.items()]
            if not owned and len(asks) == 1:
                owned = [(asks[0][0], None, exc)]
            for plan, name, error in owned:
                self.failed[(graph_key(plan), name)] = failure = Failure(describe(plan), name, error, self.log_path)
                self.say(f"fixtures {failure.describe()}")
            raise
        from harness.findings.timing import build_record

        together = [describe(plan) for plan, _ in asks] if len(asks) > 1 else []
        for (plan, todo), graph in zip(asks, graphs):
            key = graph_key(plan)
            self.graphs[key] = graph
            self.asked.setdefault(key, set()).update(todo)
            record = build_record(describe(plan), graph)
            if record is not None:
                if together:
                    record["built_with"] = [d for d in together if d != describe(plan)]
                self.timings.append(record)

    def _progress(self, what: str, todo: Sequence[str]) -> Callable[[str, str], None]:
        """The per-node terminal lines: ``[i/n] building X ...`` and ``[i/n] X built in N s``."""
        started: dict[str, float] = {}

        def say(msg: str) -> None:  # from inside quiet(): the training output still goes to the log after it
            out, err = sys.stdout, sys.stderr
            try:
                self.say(msg)
            finally:
                sys.stdout, sys.stderr = out, err

        def on_node(name: str, event: str) -> None:
            i = f"[{todo.index(name) + 1 if name in todo else '?'}/{len(todo)}]"
            if event == "start":
                started[name] = time.monotonic()
                say(f"fixtures {what}: {i} building {name} ...")
            elif event == "built":
                took = time.monotonic() - started.get(name, time.monotonic())
                say(f"fixtures {what}: {i} {name} built in {took:.0f} s (log: {self.log_path})")
            else:
                say(f"fixtures {what}: {i} {name} was built meanwhile (by another graph of this build, or another process)")

        return on_node

    def build_all(self, wants: Sequence[tuple[Any, Iterable[str]]],
                  afters: Mapping[GraphKey, Mapping[str, Any]] | None = None) -> None:
        """Every node ``wants`` names (``[(plan, nodes)]``, graphs merged by key) in ONE build: the plan, its
        training seeds and its controls' variants over one scheduler, so a control's node trains in the same wave
        as the plan's nodes (``together=False``, ``HARNESS_LEGACY_GRAPHS=1``: one build per graph, one after another).
        A build that fails is said and left to the cases: the failed node's cases fail at once with its error
        (:meth:`build`); the others build the nodes they read, one graph at a time. ``afters``: per graph, the
        after-work of its nodes (:mod:`harness.findings.prefetch`), run by the build as each node exists."""
        merged: dict[GraphKey, tuple[Any, set[str]]] = {}
        for plan, nodes in wants:
            merged.setdefault(graph_key(plan), (plan, set()))[1].update(nodes)
        asks = []
        for key, (plan, nodes) in merged.items():
            try:
                _, todo = self._todo(plan, sorted(nodes, key=plan.names.index))
            except NodeFailedError:
                continue  # its cases fail with the recorded error
            if todo or key not in self.graphs:
                asks.append((plan, todo))
        for group in [asks] if self.together else [[a] for a in asks]:
            self._build_group(group, afters)

    def _build_group(self, asks: Sequence[tuple[Any, list[str]]],
                     afters: Mapping[GraphKey, Mapping[str, Any]] | None = None) -> None:
        if not asks:
            return
        try:
            self._build_graphs(asks, afters)
        except Exception as exc:  # noqa: BLE001 - recorded (and said); the cases that read it fail
            self.say(f"fixtures: the build of {', '.join(describe(p) for p, _ in asks)} stopped "
                     f"({type(exc).__name__}); the cases that read a failed node fail with its error, the others "
                     "build the nodes they read")

    def failures(self) -> list[Failure]:
        """The nodes (or graphs) that failed to build in this session, in the order they failed."""
        return list(self.failed.values())

    def graph_of(self, plan: Any) -> Any | None:
        return self.graphs.get(graph_key(plan))

    def preflight(self, seeds: int) -> list[NodePreflight]:
        """The pre-flight and post-flight of every trained node the session asked for, graph by graph (the
        training seed named when ``seeds`` > 1, a variant when the graph is one). A node whose meta has no
        post-flight (cached before it existed) is post-flighted now: it only reads the saved folder."""
        out = []
        for key, graph in self.graphs.items():
            plan = graph.plan
            for name in plan.names:
                if name in self.asked.get(key, ()) and plan.node(name).method != "base" and graph.is_built(name):
                    meta = graph.meta(name)
                    post = None if isinstance(meta.get("postflight"), dict) else postflight_now(graph, name)
                    out.append(from_meta(name, meta, plan.seed if seeds > 1 else None, plan.variant_name, post))
        return out


def postflight_now(graph: Any, name: str) -> dict:
    """The post-flight of a built node that has no record of one (:func:`harness.train.postflight.check`);
    a folder it cannot read is an error naming it."""
    from harness.train.postflight import check

    plan = graph.plan
    try:
        return check(name, graph.path(name), graph.path(plan.nodes[0].name), graph.path(plan.node(name).parent),
                     plan.preflight_allow).to_dict()
    except HarnessError as e:
        return {"node": name, "status": "error", "findings": [
            {"code": "unreadable", "severity": "error", "file": str(graph.path(name)), "field": "", "message": str(e)}]}


@contextlib.contextmanager
def quiet(log_path: Path) -> Iterator[None]:
    """Training and generation output goes to ``log_path``, not to pytest's captured output: this process's
    stdout, stderr and logging (a build's worker processes are handed the same file: ``build(worker_log=...)``)."""
    import logging

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        handler = logging.StreamHandler(log)
        root = logging.getLogger()
        saved = [(h, h.level) for h in root.handlers]
        for h, _ in saved:
            h.setLevel(logging.CRITICAL + 1)
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            root.removeHandler(handler)
            for h, level in saved:
                h.setLevel(level)
