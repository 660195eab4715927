"""Source builders, one per claim kind (named in :mod:`harness.findings.kinds`).

``builder(session, spec, pair, control) -> [(training seed or None, source)]``: what the kind's
statistics read, for the plan's graph (or a negative control's variant). The engines are imported
inside the functions, never when ``harness.findings`` is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.findings.spec import ClaimSpec, Control, Pair

Sources = list[tuple[Any, Any]]


def weights(session: Any, spec: ClaimSpec, pair: Pair, control: Control | None) -> Sources:
    """The graph's diffs (computed once, cached on disk by node keys), one source per training seed."""
    return session.diff_sources(control)


def gen_settings(plan: Any, graph: Any) -> tuple[Any, int]:
    """``(GenSettings, longest trained reply)`` for ``plan``'s generations: the new-token budget scaled to
    the replies its nodes train on, in the base's tokenizer (:func:`harness.evaluate.nodes.reply_budget`).
    A pure function of the plan and its graph (the base built): the session and the build's after-work
    (:mod:`harness.findings.prefetch`) both call it, so they agree on the settings and so on the cache files."""
    from transformers import AutoTokenizer

    from harness.evaluate.nodes import GenSettings, reply_budget
    from harness.train.keys import node_records
    from harness.train.plan import SELFGEN

    seen: set = set()
    records: list[dict] = []
    for node in plan.nodes:
        ident = (node.method, node.dataset, repr(sorted(dict(node.source).items())))
        if node.method in ("sft", "dpo") and node.dataset != SELFGEN and ident not in seen:
            seen.add(ident)
            records += node_records(plan, node.name)
    tok = AutoTokenizer.from_pretrained(str(graph.path(plan.names[0])))
    budget, longest = reply_budget(tok, records)
    return GenSettings(max_new_tokens=budget), longest


def gen_budget(session: Any, plan: Any, graph: Any) -> tuple[Any, int]:
    """:func:`gen_settings`, once per plan and session."""
    return session.memo(("gen-budget", plan.name, plan.variant_name, plan.base, plan.limit),
                        lambda: gen_settings(plan, graph))


def seed_graphs(session: Any, control: Control | None, nodes: list[str]) -> list[tuple[Any, Any, Any]]:
    """``[(training seed or None, plan, graph)]``: one per ``--harness-seeds`` (seed None when there is one, as
    :meth:`~harness.findings.session.FindingsSession.diff_sources` does), or the negative control's variant."""
    if control is not None:
        plan, graph = session.graph(control, nodes)
        return [(None, plan, graph)]
    plans = dict(session.seed_plans())
    graphs = session.graphs(nodes)
    multi = len(graphs) > 1
    return [(s if multi else None, plans[s], g) for s, g in graphs]


def generations(session: Any, spec: ClaimSpec, pair: Pair, control: Control | None) -> Sources:
    """The pair's node's greedy generations on the held-out prompts (cached in the fixture store), one source per
    training seed; each samples on demand, reads P(stop | reply) on the node's own SFT records and carries the
    same source for the graph's base model (``base_source``: the base's generations, and its P(stop | reply) on
    the node's records)."""
    from harness.findings.eos import node_source
    from harness.train.keys import node_records

    node = pair[spec.roles[0]]
    variant = control.variant if control else None
    out: Sources = []
    for seed, plan, graph in seed_graphs(session, control, [node]):
        settings, longest = gen_budget(session, plan, graph)
        base = plan.names[0]  # the graph's base node
        records = node_records(plan, node) if plan.node(node).method == "sft" else []

        def make(name: str, plan: Any = plan, graph: Any = graph, settings: Any = settings, longest: int = longest,
                 records: list = records) -> Any:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(graph.path(node)))  # render the node's records as it trained
            return node_source(graph, name, device=session.options.device, settings=settings, longest_reply=longest,
                               data_dir=plan.data_dir, records=records, records_tokenizer=tok)

        with session.quiet():
            src = session.memo(("generations", variant, seed, node), lambda: make(node))
            if base != node and src.base_source is None:
                src.base_source = session.memo(("generations", variant, seed, node, "base", base),
                                               lambda: make(base))
        out.append((seed, src))
    return out


class JudgeMeans(dict):
    """``{prompt source: {node: mean score}}``, with the judge's counts as ``notes``."""

    notes: list[str] = []


def _device_type(session: Any) -> str:
    from harness.inference.generate import resolve_device

    return resolve_device(session.options.device).type


def _cache_root(session: Any) -> Path | None:
    return Path(session.options.fixtures_dir) if session.options.fixtures_dir else None


class BaseRow:
    """A table 24 read as if the graph's base model were every node: ``cell(node, column)`` is the base's cell,
    so the similarity statistics give the base's value for a pair (a row's ``base_value``)."""

    def __init__(self, table: Any, base: str) -> None:
        self.table, self.base, self.notes = table, base, list(getattr(table, "notes", ()))

    def cell(self, row: str, column: str) -> Any:
        return self.table.cell(self.base, column)


def similarity(session: Any, spec: ClaimSpec, pair: Pair, control: Control | None) -> Sources:
    """Seed table 24 for the plan's SFT nodes and its base: BLEU and BERTScore against D0 and D1, one table per
    training seed; the base's rows are the table's ``base_source`` (:class:`BaseRow`). The encoder is
    ``HARNESS_BERTSCORE_MODEL``, else :func:`~harness.evaluate.similarity.default_bert_score` (the multilingual
    BERT when cached locally, else the plan's base node)."""
    from harness.evaluate.claims import sft_nodes_by_data

    plan0 = session.variant_plan(control)
    nodes = [n for n in sft_nodes_by_data(plan0) if n in plan0.names]
    variant = control.variant if control else None

    def make(plan: Any, graph: Any) -> Any:
        from harness import data
        from harness.evaluate.nodes import graph_generations
        from harness.evaluate.similarity import bleu_tokenizer, default_bert_score, table24, try_bert_score

        base = plan.names[0]
        names = nodes + ([base] if base not in nodes else [])
        with session.quiet():
            gens = graph_generations(graph, ["persona"], gen_budget(session, plan, graph)[0], names, limit=plan.limit,
                                     data_dir=plan.data_dir,
                                     device=session.options.device, cache_root=_cache_root(session), progress=False)
            env = session.options.env
            where = {"device": _device_type(session), "graph": graph, "cache_root": _cache_root(session),
                     "gguf_dir": env.gguf_folder}
            if env.bertscore_model:
                scorer, note = try_bert_score(env.bertscore_model, env.bertscore_layers, **where)
            else:
                scorer, note = default_bert_score(num_layers=env.bertscore_layers, **where)
        items = data.load_persona(plan.data_dir)[: plan.limit or None]
        texts = {n: [g.text for g in gens[(n, "persona")]] for n in names}
        table = table24(texts, [i.d0 for i in items], [i.d1 for i in items], bleu_tokenizer(), scorer, note)
        table.base_source = BaseRow(table, base)
        return table

    return [(seed, session.memo(("similarity", variant, seed), lambda: make(plan, graph)))
            for seed, plan, graph in seed_graphs(session, control, nodes)]


def judge(session: Any, spec: ClaimSpec, pair: Pair, control: Control | None) -> Sources:
    """Mean LLM-judge scores per node and prompt source (the judge's model, limit, token budget and
    concurrency come from the session's options: ``HARNESS_JUDGE_*``)."""

    def make() -> Any:
        from harness.evaluate.judge import Judge, JudgeConfig, mean_score
        from harness.evaluate.nodes import fixtures_dir, graph_generations, prompts

        plan = session.variant_plan(control)
        nodes = sorted({p[r] for p in spec.pairs for r in spec.roles if p[r] in plan.names})
        _, graph = session.graph(control, nodes)
        env = session.options.env
        limit = env.judge_limit
        persona_limit = min(limit, plan.limit) if limit and plan.limit else (limit or plan.limit)
        with session.quiet():
            gens = graph_generations(graph, ["persona", "eval"], gen_budget(session, plan, graph)[0], nodes,
                                     data_dir=plan.data_dir,
                                     limit=persona_limit,
                                     eval_limit=limit, device=session.options.device,
                                     cache_root=_cache_root(session), progress=False)
        root = _cache_root(session) or fixtures_dir(graph)
        endpoint = session.judge_endpoint()
        j = Judge(JudgeConfig(model=endpoint.model, base_url=endpoint.base_url, cache_dir=root / "judge",
                              max_tokens=1024 if env.judge_max_tokens is None else env.judge_max_tokens,
                              concurrency=8 if env.judge_concurrency is None else env.judge_concurrency))
        means = JudgeMeans()
        for source in ("persona", "eval"):
            qs = prompts(source, folder=plan.data_dir).questions  # zip stops at the (limited) generations
            means[source] = {n: mean_score(j.score([(q, g.text) for q, g in zip(qs, gens[(n, source)])],
                                                   progress=False)) for n in nodes}
        u = j.usage
        cost = "unknown" if u.cost_usd is None else f"${u.cost_usd:.4f}"
        means.notes = [f"judge {endpoint.label}: {u.items} replies, {u.scored} scored, {u.unparsable} unparsable, "
                       f"{u.errors} failed; {u.requests} requests, {u.cache_hits} cache hits, tokens "
                       f"{u.prompt_tokens}/{u.completion_tokens}, cost {cost}"]
        return means

    return [(None, session.memo(("judge", control.variant if control else None), make))]
