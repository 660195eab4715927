"""The claims' generations computed inside the build: per graph and node, what the selected cases of kinds
``generations`` and ``similarity`` will read (greedy and sampled generations, P(stop | reply), persona
generations), run by a build worker as soon as the node exists (:class:`harness.train.graph.BuildRequest`'s
``after``), so that the claims phase finds it in the fixture store's caches and generates nothing.

The work goes through the very functions the sources call (:func:`harness.findings.eos.node_source`,
:func:`harness.findings.eos.node_stop_probs`, :func:`harness.evaluate.nodes.graph_generations`) with the same
settings (:func:`harness.findings.sources.gen_settings`), prompts and cache roots: the cache files are the ones
the main process would write, byte for byte. A piece that fails in a worker is only said in the log; the
session computes it again as before and raises its own error. ``judge`` cases are not prefetched (their
generations are few, and the judge's endpoint is the session's). ``HARNESS_LEGACY_PREFETCH=1`` turns this off.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from harness.findings.builds import GraphKey, graph_key
from harness.findings.statistics import call_params

#: the statistics that read seeded sampled generations, and those that read P(stop | reply)
SAMPLED = ("sampled_stop_rate", "loop_rate")
PROBES = ("stop_prob", "stop_prob_gain")


@dataclass(frozen=True)
class NodeWork:
    """What one node's after-work computes, on the settings of its graph's plan.

    ``eval``: its greedy generations on the held-out prompts (``node_source``); ``samples``: seeded sampled ones,
    ``(temperature, top_p, seed)``; ``probes``: P(stop | reply) limits on its own SFT records; ``base_probes``:
    the base's P(stop | reply) limits on this node's records (in its tokenizer); ``persona``: its persona
    generations (the plan's limit) under ``cache_root``. ``device`` is the session's device option."""

    device: str = "auto"
    cache_root: str | None = None
    eval: bool = False
    samples: tuple[tuple[float, float, int], ...] = ()
    probes: tuple[int, ...] = ()
    base_probes: tuple[int, ...] = ()
    persona: bool = False

    def merged(self, other: "NodeWork") -> "NodeWork":
        """Both works' pieces (each once)."""
        def union(a: tuple, b: tuple) -> tuple:
            return tuple(dict.fromkeys(a + b))

        return dataclasses.replace(self, eval=self.eval or other.eval, persona=self.persona or other.persona,
                                   samples=union(self.samples, other.samples), probes=union(self.probes, other.probes),
                                   base_probes=union(self.base_probes, other.base_probes))


def run_node_work(work: NodeWork, graph: Any, name: str) -> None:
    """Compute ``work`` for node ``name`` of ``graph`` into the fixture store's caches (a build worker calls it
    once the node exists; nothing is returned: the caches are the result)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from harness.evaluate.nodes import graph_generations
    from harness.findings.eos import node_source, node_stop_probs
    from harness.findings.sources import gen_settings
    from harness.train.keys import node_records

    plan = graph.plan
    settings, longest = gen_settings(plan, graph)
    records = node_records(plan, name) if plan.node(name).method == "sft" else []
    if work.eval or work.samples or work.probes or work.base_probes:
        tok = AutoTokenizer.from_pretrained(str(graph.path(name)))  # the records rendered as the node trained
        if work.eval or work.samples or work.probes:
            src = node_source(graph, name, device=work.device, settings=settings, longest_reply=longest,
                              data_dir=plan.data_dir, records=records, records_tokenizer=tok)
            for temperature, top_p, seed in work.samples:
                src.sample(temperature, top_p, seed)
            for limit in work.probes:
                if src.stop_probe is not None:
                    src.stop_probe(limit)
        for limit in work.base_probes if records else ():
            node_stop_probs(graph, plan.names[0], records, limit, tok, work.device)
    if work.persona:
        graph_generations(graph, ["persona"], settings, [name], limit=plan.limit, data_dir=plan.data_dir,
                          device=work.device, cache_root=Path(work.cache_root) if work.cache_root else None,
                          progress=False)


def _generations_work(spec: Any, plan: Any, node: str, empty: NodeWork) -> tuple[NodeWork, NodeWork | None]:
    """A ``generations`` case's work on its node, and on the graph's base (None: the node is the base). Each
    check runs on the node's source and, for the row's base value, on the base's
    (:func:`harness.findings.verdict.evaluate`): the base samples as the node does, and reads P(stop | reply)
    on the node's records, for ``stop_prob`` and for the node's ``stop_prob_gain``."""
    samples, probes = [], []
    sft = plan.node(node).method == "sft"  # only an SFT node's source has records to probe
    for check in spec.checks:
        p = call_params(check.statistic, check.kwargs())
        if check.statistic == "sampled_stop_rate" or (check.statistic == "loop_rate" and p.get("sampled")):
            # cast as the statistics cast (a float and an int enter the cache key differently)
            samples.append((float(p["temperature"]), float(p["top_p"]), int(p["seed"])))
        elif check.statistic in PROBES and sft:
            probes.append(int(p["limit"]))
    samples_, probes_ = tuple(dict.fromkeys(samples)), tuple(dict.fromkeys(probes))
    if node == plan.names[0]:
        return dataclasses.replace(empty, eval=True, samples=samples_, probes=probes_), None
    return (dataclasses.replace(empty, eval=True, samples=samples_, probes=probes_, base_probes=probes_),
            dataclasses.replace(empty, eval=True, samples=samples_))


def plan_work(session: Any, resolved: Sequence[Any]) -> dict[GraphKey, dict[str, NodeWork]]:
    """``{graph: {node: NodeWork}}``: what the resolved cases (``Resolved``, not skipped) of kinds
    ``generations`` and ``similarity`` will read of each graph (the plan per training seed, a control's
    variant)."""
    from harness.evaluate.claims import sft_nodes_by_data

    empty = NodeWork(device=session.options.device, cache_root=session.options.fixtures_dir)
    out: dict[GraphKey, dict[str, NodeWork]] = {}

    def add(plan: Any, node: str, work: NodeWork) -> None:
        nodes = out.setdefault(graph_key(plan), {})
        nodes[node] = nodes[node].merged(work) if node in nodes else work

    for r in resolved:
        spec, pair = r.case.spec, r.case.pair
        if r.skip is not None or spec.kind not in ("generations", "similarity"):
            continue
        for plan in r.plans:
            if spec.kind == "generations":
                node = pair[spec.roles[0]]
                work, base_work = _generations_work(spec, plan, node, empty)
                add(plan, node, work)
                if base_work is not None:
                    add(plan, plan.names[0], base_work)
            else:
                nodes = [n for n in sft_nodes_by_data(plan) if n in plan.names]
                for n in nodes + [plan.names[0]]:
                    add(plan, n, dataclasses.replace(empty, persona=True))
    return out


def afters(session: Any, resolved: Sequence[Any]) -> dict[GraphKey, dict[str, Callable[[Any, str], Any]]]:
    """:func:`plan_work` as the build's after-work: per graph, per node, a picklable callable."""
    return {key: {n: functools.partial(run_node_work, w) for n, w in nodes.items()}
            for key, nodes in plan_work(session, resolved).items()}
