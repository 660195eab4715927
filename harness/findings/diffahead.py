"""Weight diffs computed ahead of the statistics, while the claims session's build trains the nodes.

The weights statistics read their diffs lazily (:class:`harness.findings.diffs.DiffSource`), one after another,
once every node has trained; meanwhile the main process only waits on the build. Here one thread of the main
process computes those diffs during the build instead: each as soon as every node it compares exists (found
complete before the build, or heard "built"/"found" from it), through a ``DiffSource`` made for that graph as
the statistics make theirs, so the same ``compare`` call writes the same cache file that the statistics then
read.

Which diffs: those of every selected ``weights`` case's checks (:func:`harness.findings.statistics.diffs_read`),
on each graph the case reads (the plan under every training seed, or its negative control's variant); and when
the report draws its plots (a weights case on the plan itself runs), the plots' diffs on the plan's first
graph (:func:`harness.findings.report.plot_diffs`).

When: during the build where its nodes train in other processes (the build's workers: several slots or several
nodes at once on CUDA, device slots named by ``HARNESS_DEVICES``, the Ray executor); while a build trains in this
process (one node at a time on one device: the CPU's default) the thread pauses until that build returns, so that
the diffs share neither this process's cores and torch thread settings nor a CUDA graph capture with training.
The session waits for the thread before its first weights statistic. A diff that fails here is written to the
session's log and left to the statistics, which compute it again (and raise their own error).
``HARNESS_LEGACY_PREFETCH=1``: no diff ahead.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness.errors import HarnessError
from harness.findings.builds import GraphKey, describe, graph_key
from harness.findings.report import conflict_pairs, plot_diffs
from harness.findings.statistics import diffs_read

Triple = tuple[str, str, str | None]

#: the session's timing phase of the diffs computed while the build ran (harness.findings.timing)
PHASE = "weight diffs during the build"


@dataclass
class Want:
    """What one graph's diffs ahead are for: the weights cases that read it, and whether the plots do."""

    plan: Any
    cases: list[tuple[Any, Any]] = field(default_factory=list)  # (ClaimSpec, Pair)
    plot_specs: Sequence[Any] | None = None  # the specs whose conflict triples the plots draw; None: no plots

    def triples(self, source: Any) -> list[Triple]:
        """The diffs the cases' checks and the plots read, resolved on ``source``'s graph; a reference that does
        not resolve is left out (the statistic raises it itself)."""
        out: list[Triple] = []
        for spec, pair in self.cases:
            for check in spec.checks:
                try:
                    out += diffs_read(source, pair, check.statistic, check.kwargs())
                except Exception:  # noqa: BLE001 - the statistic raises it, in its case
                    continue
        if self.plot_specs is not None:
            out += plot_diffs(self.plan, conflict_pairs(self.plot_specs, source), lambda n: True)
        return list(dict.fromkeys(out))


@dataclass
class Record:
    """One diff the thread took: where, which, when (``time.perf_counter``) and how it went."""

    graph: str
    triple: Triple
    file: Path | None  # its cache file
    queued: float
    started: float | None = None
    ended: float | None = None
    outcome: str = "queued"  # queued, computed, cached, failed, dropped
    error: str | None = None


class DiffsAhead:
    """The diffs ahead of one session's build: :meth:`watch` hooks each graph of a build, a thread computes each
    diff once its nodes exist (paused while a build trains in this process), :meth:`build_ended` lets it run
    after a build, :meth:`join` waits for it.

    ``wants``: per graph key, what its diffs are for; ``make_source(plan, graph)``: the graph's
    :class:`~harness.findings.diffs.DiffSource`, made as the statistics make theirs; ``log``: where a line about
    each diff goes (the session's log)."""

    def __init__(self, wants: dict[GraphKey, Want], make_source: Callable[[Any, Any], Any], *,
                 log: Callable[[str], None]) -> None:
        self.wants, self.make_source, self.log = wants, make_source, log
        self.records: list[Record] = []
        self.build_end: float | None = None
        self._lock = threading.Lock()
        self._pending: dict[GraphKey, tuple[Any, Any, list[Triple]]] = {}  # graph key -> (graph, source, diffs)
        self._files: set[Path] = set()  # cache files queued (a node two graphs share gives them one diff)
        self._queue: queue.Queue = queue.Queue()
        self._go = threading.Event()  # the thread may compute: no build trains in this process
        self._go.set()
        self._idle = threading.Event()  # the thread computes nothing now
        self._idle.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="harness-diffs-ahead", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the build's side (this process)
    def watch(self, request: Any) -> Any:
        """A :class:`harness.train.graph.BuildRequest` of a wanted graph, hooked: its ``on_graph`` hands the graph
        here, its ``on_node`` also tells this of each node's end. Other graphs' requests come back unchanged."""
        key = graph_key(request.plan)
        if key not in self.wants:
            return request
        told, ready = request.on_node, request.on_graph

        def on_node(name: str, event: str) -> None:
            if told is not None:
                told(name, event)
            if event != "start":
                self._heard(key)

        def on_graph(graph: Any, todo: list[str], here: bool) -> None:
            if ready is not None:
                ready(graph, todo, here)
            if here:  # the build trains in this process: no diff beside it
                self.pause()
            self._graph(key, graph)

        return dataclasses.replace(request, on_node=on_node, on_graph=on_graph)

    def _graph(self, key: GraphKey, graph: Any) -> None:
        want = self.wants[key]
        try:
            source = self.make_source(want.plan, graph)
            triples = want.triples(source)
        except Exception as exc:  # noqa: BLE001 - the statistics meet it again
            self.log(f"diffs ahead: {describe(want.plan)}: none ({type(exc).__name__}: {exc})")
            return
        with self._lock:
            self._pending[key] = (graph, source, triples)
        self._heard(key)

    def _heard(self, key: GraphKey) -> None:
        """Queue the graph's diffs whose nodes all exist now."""
        try:
            with self._lock:
                if key not in self._pending:
                    return
                graph, source, triples = self._pending[key]
                ready = [t for t in triples if all(graph.is_built(n) for n in t if n is not None)]
                self._pending[key] = (graph, source, [t for t in triples if t not in ready])
                for t in ready:
                    cache = source.cache_file(*t)
                    if cache is not None and cache in self._files:
                        continue
                    if cache is not None:
                        self._files.add(cache)
                    record = Record(describe(self.wants[key].plan), t, cache, time.perf_counter())
                    self.records.append(record)
                    self._queue.put((source, record))
        except Exception as exc:  # noqa: BLE001 - never the build's failure
            self.log(f"diffs ahead: {type(exc).__name__}: {exc}")

    def pause(self) -> None:
        """Compute nothing from now on (the diff in progress ends first) until :meth:`build_ended`."""
        self._go.clear()
        self._idle.wait()

    def build_ended(self) -> None:
        """A build returned: queue what is ready (a node complete without an event) and let the thread run. The
        first call marks the end of the session's build (:meth:`seconds_during_build`)."""
        if self.build_end is None:
            self.build_end = time.perf_counter()
        for key in list(self._pending):
            self._heard(key)
        self._go.set()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            source, record = item
            while True:  # wait until no build trains here, and say so before a pause() can return
                self._go.wait()
                self._idle.clear()
                if self._go.is_set():
                    break
                self._idle.set()
            try:
                self._take(source, record)
            finally:
                self._idle.set()

    def _take(self, source: Any, record: Record) -> None:
        """Compute one diff (or find it cached); a failure is logged and left to the statistics."""
        if self._stop.is_set():
            record.outcome = "dropped"
            return
        record.started = time.perf_counter()
        a, b, ref = record.triple
        try:
            if source.cached(a, b, ref):
                record.outcome = "cached"
            else:
                source.diff(a, b, ref)
                record.outcome = "computed"
        except Exception as exc:  # noqa: BLE001 - left to the statistics, which raise their own error
            record.outcome, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.ended = time.perf_counter()
        self.log(f"diffs ahead: {record.graph}: diff({a}, {b}" + (f", ref {ref})" if ref else ")")
                 + f" {record.outcome} in {record.ended - record.started:.2f} s"
                 + (f": {record.error} (the statistics compute it again)" if record.error else ""))

    # ------------------------------------------------------------------ the session's side
    def join(self, stop: bool = False) -> None:
        """Wait for the thread: every queued diff done (``stop``: after the one it is on, the rest dropped)."""
        if stop:
            self._stop.set()
        if self.build_end is None:
            self.build_end = time.perf_counter()
        self._go.set()
        self._queue.put(None)
        self._thread.join()

    def seconds_during_build(self) -> float:
        """The thread's seconds on diffs while the build ran (the rest the session waited for, or overlapped
        with later phases)."""
        end = self.build_end if self.build_end is not None else time.perf_counter()
        return sum(max(0.0, min(r.ended, end) - r.started) for r in self.records
                   if r.started is not None and r.ended is not None)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.records)

    def summary(self) -> str:
        """One line: how many diffs were computed ahead, found cached, failed, and the seconds in the build."""
        failed = self.count("failed")
        return (f"weight diffs ahead: {self.count('computed')} computed ({self.seconds_during_build():.1f} s of "
                f"them during the build), {self.count('cached')} already cached"
                + (f", {failed} failed (left to the statistics)" if failed else ""))


def start(session: Any, cases: Iterable[Any], make_source: Callable[[Any, Any], Any]) -> DiffsAhead | None:
    """The diffs ahead of ``cases`` (the session's planned cases), or None when none of them reads weights.
    ``session`` is the :class:`~harness.findings.session.FindingsSession` (its resolved cases, plans, specs,
    options and log)."""
    wants: dict[GraphKey, Want] = {}
    plots = False
    for case in cases:
        if case.spec.kind != "weights":
            continue
        try:
            resolved = session.resolve(case)
        except HarnessError:
            continue
        if resolved.skip is not None:
            continue
        for plan in resolved.plans:
            wants.setdefault(graph_key(plan), Want(plan)).cases.append((case.spec, case.pair))
        plots = plots or case.control is None
    if plots:  # the report plots the plan's first graph (FindingsSession.plot) once a weights case read it
        plan = session.seed_plans()[0][1]
        wants.setdefault(graph_key(plan), Want(plan)).plot_specs = session.specs()
    if not wants:
        return None
    log_path = Path(session.log_path)

    def log(line: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return DiffsAhead(wants, make_source, log=log)
