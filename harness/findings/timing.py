"""Where a claims session's wall time went: its phases (building the graphs, each kind's sources, the
statistics and verdicts with the weight diffs they compute, the report's plots) and, per graph build, the
base, the pre-flight, each wave of nodes and each trained node's own figures (train time, steps, tokens/s,
MFU from its train summary, and the seconds of the claims' generations a build worker computed once it existed:
:mod:`harness.findings.prefetch`).

The findings JSON carries it as ``meta.timing``; the Markdown as a "Timing" section. Figures only: no test
asserts a time (speed is measured by ``tests/benchmarks/test_bench_claims_phases.py``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Mapping

#: what a kind's sources spend their time on (the phase's name in the report). The weight diffs are computed
#: during the build (harness.findings.diffahead: its own phase, overlapping "build"); "diff sources" is the wait
#: for those still running when the build ended; a diff not computed ahead is computed as the statistics read
#: it, in :data:`STATISTICS`
KIND_PHASE = {"weights": "diff sources", "generations": "generation", "similarity": "generation, BLEU/BERTScore",
              "judge": "judge"}


STATISTICS = "statistics (the weight diffs) and verdicts"


class Timing:
    """Seconds per phase of one session, summed over the cases that ran the phase."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def to_dict(self, builds: list[dict]) -> dict[str, Any]:
        return {"session_s": round(time.perf_counter() - self.started, 3),
                "phases": {k: round(v, 3) for k, v in self.phases.items()}, "builds": builds}


def build_record(what: str, graph: Any) -> dict[str, Any] | None:
    """One graph build's figures: its timeline (base, pre-flight, nodes, total), every node it trained,
    with its wave (the node's depth below the base), its train summary's figures and the seconds of its
    after-work (the claims' generations the build computed, ``after_s``), and the after-work of each node it
    did not train (``after_s``: node -> seconds, ``after_errors``: node -> error); None when the build ran
    nothing."""
    t = graph.timeline
    if "nodes" not in t:
        return None
    nodes = []
    for name in graph.trained:
        meta = graph.meta(name)
        train = meta.get("train") or {}
        nodes.append({"node": name, "wave": len(graph.plan.ancestors(name)) - 1,
                      "started_unix": meta.get("started_unix"), "wall_s": meta.get("wall_seconds"),
                      **{k: train.get(k) for k in ("setup_s", "train_call_s", "merge_save_s", "steps", "first_step_s",
                                                   "median_step_s", "tokens_per_s", "mfu", "lean_steps")},
                      "after_s": getattr(graph, "after_s", {}).get(name)})
    waves: dict[int, list[dict]] = {}
    for n in nodes:
        if n["started_unix"] is not None and n["wall_s"] is not None:
            waves.setdefault(n["wave"], []).append(n)
    spans = {str(w): round(max(n["started_unix"] + n["wall_s"] for n in ns) - min(n["started_unix"] for n in ns), 3)
             for w, ns in sorted(waves.items())}
    after = {n: round(s, 3) for n, s in getattr(graph, "after_s", {}).items()}
    return {"graph": what, **{f"{k}_s": round(v, 3) for k, v in t.items()}, "waves_s": spans, "nodes": nodes,
            "after_s": after, "after_errors": dict(getattr(graph, "after_errors", {}))}


def _s(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def markdown(timing: Mapping[str, Any]) -> str:
    """The findings' "Timing" section: the phases, then each graph build and its nodes."""
    lines = ["| phase | seconds |", "|---|---|", f"| the session (pytest's start to the report) | {_s(timing.get('session_s'))} |"]
    lines += [f"| {phase} | {_s(s)} |" for phase, s in (timing.get("phases") or {}).items()]
    for b in timing.get("builds") or []:
        waves = ", ".join(f"wave {w} {_s(s)} s" for w, s in (b.get("waves_s") or {}).items())
        lines += ["", f"Build of {b['graph']}: {_s(b.get('total_s'))} s: base ready {_s(b.get('base_s'))} s, "
                      f"pre-flight {_s(b.get('preflight_s'))} s, nodes {_s(b.get('nodes_s'))} s" + (f" ({waves})" if waves else "")
                      + (f"; its nodes trained together with those of {', '.join(b['built_with'])}"
                         if b.get("built_with") else ""),
                  "", "| node | wave | wall s | setup s | train s | merge s | steps | first step s | median step s | "
                      "tokens/s | MFU | after s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n in b.get("nodes") or []:
            mfu = "n/a" if n.get("mfu") is None else f"{100 * n['mfu']:.2f} %"
            tps = "-" if n.get("tokens_per_s") is None else f"{n['tokens_per_s']:.0f}"
            median = "-" if n.get("median_step_s") is None else f"{n['median_step_s']:.3f}"
            lines.append(f"| {n['node']} | {n['wave']} | {_s(n.get('wall_s'))} | {_s(n.get('setup_s'))} | "
                         f"{_s(n.get('train_call_s'))} | {_s(n.get('merge_save_s'))} | {n.get('steps') or '-'} | "
                         f"{_s(n.get('first_step_s'))} | {median} | {tps} | {mfu} | {_s(n.get('after_s'))} |")
        trained = {n["node"] for n in b.get("nodes") or []}
        others = {k: s for k, s in (b.get("after_s") or {}).items() if k not in trained}
        if others:
            lines += ["", "After-work of nodes this build did not train: "
                      + ", ".join(f"{k} {_s(s)} s" for k, s in others.items())]
        for k, error in (b.get("after_errors") or {}).items():
            lines.append(f"\nAfter-work of {k} failed in the build (computed again after it): {error}")
    lines += ["", "MFU: 6 x parameters x tokens / train time / the GPU's dense bf16 peak; n/a on the CPU (no peak known). "
              "after s: the claims' generations a build worker computed once the node existed "
              "(harness.findings.prefetch)."]
    return "\n".join(lines)
