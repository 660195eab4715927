"""Statistics: named functions computing a claim's measured value.

A statistic is ``fn(source, pair, **params) -> float``, registered for a claim kind
(:func:`harness.findings.kinds.register_statistic`) in :data:`STATISTICS`.

- ``weights`` statistics take a :class:`WeightSource` (``diff(a, b, ref)`` -> a typed
  :class:`harness.diff.DiffReport`, ``parent(node)``, ``base()``); see :class:`harness.findings.diffs.DiffSource`.
- ``generations`` statistics take a :class:`GenerationSource` (the outputs of greedy generation).

Node references in ``params`` are a role of the pair (``"dpo"``), ``"parent(dpo)"`` for the
node that role's node was trained from, or ``"base"`` (the graph's base node).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from harness.errors import HarnessError
from harness.findings.kinds import STATISTICS, Statistic, statistic  # noqa: F401 - STATISTICS is read from here
from harness.findings.spec import BASE_REF, Pair

_PARENT = re.compile(r"^parent\((\w+)\)$")
_LAYER = re.compile(r"(\d+)\s*$")


class WeightSource(Protocol):
    def diff(self, a: str, b: str, ref: str | None = None) -> Any: ...  # a harness.diff.DiffReport

    def parent(self, node: str) -> str | None: ...


@dataclass
class GenerationSource:
    """Generations of one model: per output whether it stopped on a stop token, and its text.

    Optional, for C6's finer statistics: the new tokens and ``hit_max`` of each output (repetition loops),
    ``sample(temperature, top_p, seed)`` (the same prompts, seeded sampling; another GenerationSource),
    ``stop_probe(limit)`` (a :class:`harness.inference.stopprob.StopProbs` of the first ``limit`` trained
    replies) and ``base_source`` (the same source built for the graph's base model, for base values).
    """

    stopped: Sequence[bool]
    texts: Sequence[str]
    eos_texts: Sequence[str] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    token_ids: Sequence[Sequence[int]] = ()
    hit_max: Sequence[bool] = ()
    sample: Callable[[float, float, int], "GenerationSource"] | None = None
    stop_probe: Callable[[int], Any] | None = None
    base_source: "GenerationSource | None" = None
    _seen: dict = field(default_factory=dict, repr=False, compare=False)

    def sampled(self, temperature: float, top_p: float, seed: int) -> "GenerationSource":
        """The seeded sampled generations (computed once per setting)."""
        if self.sample is None:
            raise NotMeasured("this source has no sampler (greedy generations only)")
        key = ("sampled", temperature, top_p, seed)
        if key not in self._seen:
            self._seen[key] = self.sample(temperature, top_p, seed)
        return self._seen[key]

    def stop_probs(self, limit: int) -> Any:
        """P(stop | reply) over the first ``limit`` trained replies (computed once per limit)."""
        if self.stop_probe is None:
            raise NotMeasured("this source has no trained replies to read P(stop | reply) on")
        key = ("stop_probs", limit)
        if key not in self._seen:
            self._seen[key] = self.stop_probe(limit)
        return self._seen[key]

    @property
    def notes(self) -> list[str]:
        """The generation budget and how many replies ran into it, and what the finer statistics read (shown
        beside the findings)."""
        m = self.meta
        out = [self.budget_note()] if "max_new_tokens" in m else []
        for key, value in self._seen.items():
            if key[0] == "stop_probs":
                out.append(value.describe())
            elif key[0] == "sampled":
                out.append(f"sampled (temperature {key[1]:g}, top-p {key[2]:g}, seed {key[3]}): "
                           f"{sum(map(bool, value.stopped))} of {len(value.stopped)} stopped")
        return out

    def budget_note(self) -> str:
        """The budget, and what set it: 1.5x the longest trained reply, or the floor of 48 new tokens."""
        from harness.evaluate.nodes import BUDGET_SLACK, MIN_NEW_TOKENS, scaled_budget

        m = self.meta
        budget, longest = m["max_new_tokens"], m.get("longest_reply") or 0
        if longest and budget == scaled_budget(longest) != MIN_NEW_TOKENS:
            why = f" ({BUDGET_SLACK:g}x the longest trained reply, {longest} tokens)"
        elif budget == MIN_NEW_TOKENS and longest:
            why = (f" (the {MIN_NEW_TOKENS}-token floor: {BUDGET_SLACK:g}x the longest trained reply, "
                   f"{longest} tokens, is not above it)")
        elif budget == MIN_NEW_TOKENS:
            why = f" (the {MIN_NEW_TOKENS}-token floor)"
        else:
            why = ""
        return (f"{m.get('n', len(self.stopped))} prompts, budget {budget} new tokens{why}, "
                f"{m.get('hit_max', '?')} hit it")


class NotMeasured(Exception):
    """Raised by a statistic whose source cannot measure it here (e.g. no BERTScore model loaded):
    the runner records the check as a ``not measured`` row whose note says why."""


def resolve(source: Any, pair: Pair, ref: str) -> str:
    """Turn a role, ``parent(role)`` or ``base`` (the graph's base node) into a node name."""
    m = _PARENT.match(ref)
    if m:
        node = resolve(source, pair, m.group(1))
        parent = source.parent(node)
        if parent is None:
            raise HarnessError(f"node {node!r} has no parent, so {ref!r} cannot be resolved")
        return parent
    node = pair.get(ref)
    if node is None and ref == BASE_REF and hasattr(source, "base"):
        return source.base()
    return node or ref


def _nodes(source: Any, pair: Pair, refs: Sequence[str], what: str) -> list[str]:
    if not isinstance(refs, (list, tuple)) or len(refs) not in (2, 3):
        raise HarnessError(f"statistic parameter {what!r} must list 2 or 3 node references, got {refs!r}")
    return [resolve(source, pair, r) for r in refs]


def _diff(source: WeightSource, pair: Pair, refs: Sequence[str], what: str) -> Any:
    return source.diff(*_triple(source, pair, refs, what))


def _triple(source: Any, pair: Pair, refs: Sequence[str], what: str) -> tuple[str, str, str | None]:
    nodes = _nodes(source, pair, refs, what)
    return nodes[0], nodes[1], nodes[2] if len(nodes) == 3 else None


#: the parameters through which the weights statistics name the diffs they read (2 or 3 node references
#: each, read with :func:`_diff`); :func:`diffs_read` lists a check's diffs from them
DIFF_PARAMS = ("num", "den", "diff")


def call_params(statistic_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What the statistic ``statistic_name`` is called with for a check's ``params``: those over the
    function's own defaults (the claims session reads them to compute ahead what the statistic will read)."""
    fn = STATISTICS.get(statistic_name)
    out = {name: p.default for name, p in inspect.signature(fn).parameters.items()
           if p.default is not inspect.Parameter.empty}
    out.update(params)
    return out


def diffs_read(source: Any, pair: Pair, statistic_name: str, params: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """The diffs ``(a, b, ref)`` the weights statistic ``statistic_name`` reads for ``pair`` with ``params`` (a
    check's), its :data:`DIFF_PARAMS` (given, else the function's defaults) resolved against ``source``'s graph
    as the statistic resolves them; the claims session computes them ahead (:mod:`harness.findings.diffahead`).
    A reference that cannot be resolved raises as it would in the statistic."""
    given = call_params(statistic_name, params)
    return [_triple(source, pair, given[what], what) for what in DIFF_PARAMS if what in given]


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return math.inf if num > 0 else math.nan
    return num / den


def layer_index(layer: Any) -> int:
    """The block index of a ``layers[i]["layer"]`` entry (an int or a name ending in digits)."""
    if isinstance(layer, int):
        return layer
    m = _LAYER.search(str(layer))
    if not m:
        raise HarnessError(f"diff report layer {layer!r} has no block index")
    return int(m.group(1))


def typed(report: Any) -> Any:
    """A :class:`harness.diff.DiffReport` (a stored JSON dict is read into one)."""
    from harness.diff.report import DiffReport

    return report if isinstance(report, DiffReport) else DiffReport.from_dict(dict(report))


def layer_values(report: Any, key: str) -> list[tuple[int, float]]:
    """``(block index, value)`` for each decoder layer of a DiffReport, sorted by index."""
    rows = [(layer_index(s.layer), getattr(s, key)) for s in typed(report).layers]
    if not rows:
        raise HarnessError("diff report has no decoder layers")
    return sorted((i, float("nan") if v is None else float(v)) for i, v in rows)


@statistic("weights", "l2_ratio")
def l2_ratio(source: WeightSource, pair: Pair, *, num: Sequence[str], den: Sequence[str]) -> float:
    """Total L2 of the ``num`` diff over the total L2 of the ``den`` diff."""
    return _ratio(_diff(source, pair, num, "num").total.l2, _diff(source, pair, den, "den").total.l2)


@statistic("weights", "conflict_ratio")
def conflict_ratio(source: WeightSource, pair: Pair, *, num: Sequence[str], den: Sequence[str],
                   field: str = "conflict_rate") -> float:
    """A conflict field (``conflict_rate`` or ``conflict_l2``) of ``num`` over that of ``den``.

    ``num``/``den`` are ``[a, b, ref]``: the task vectors a−ref and b−ref.
    """
    if field not in ("conflict_rate", "conflict_l2", "conflicts"):
        raise HarnessError(f"conflict_ratio: unknown field {field!r}; known: conflict_rate, conflict_l2, conflicts")
    n = getattr(_diff(source, pair, num, "num").total, field)
    d = getattr(_diff(source, pair, den, "den").total, field)
    if n is None or d is None:
        raise HarnessError("conflict_ratio needs diffs with a reference checkpoint (3 node references)")
    return _ratio(float(n), float(d))


def _quarters(values: list[float]) -> tuple[list[float], list[float]]:
    q = max(1, len(values) // 4)
    return values[:q], values[-q:]


@statistic("weights", "depth_quarter_ratio")
def depth_quarter_ratio(source: WeightSource, pair: Pair, *, diff: Sequence[str] = ("node", "parent(node)")) -> float:
    """Mean layer L2 of the last quarter of layers over that of the first quarter."""
    values = [v for _, v in layer_values(_diff(source, pair, diff, "diff"), "l2")]
    first, last = _quarters(values)
    return _ratio(sum(last) / len(last), sum(first) / len(first))


@statistic("weights", "depth_spearman")
def depth_spearman(source: WeightSource, pair: Pair, *, diff: Sequence[str] = ("node", "parent(node)")) -> float:
    """Spearman rank correlation of layer index with layer L2."""
    from scipy.stats import spearmanr

    rows = layer_values(_diff(source, pair, diff, "diff"), "l2")
    if len(rows) < 3:
        raise HarnessError(f"depth_spearman needs at least 3 layers, the diff has {len(rows)}")
    rho = spearmanr([i for i, _ in rows], [v for _, v in rows]).statistic
    return float(rho)


@statistic("generations", "stop_rate")
def stop_rate(source: GenerationSource, pair: Pair) -> float:
    """Fraction of generations that ended on a stop token (not at ``max_new_tokens``)."""
    if not source.stopped:
        raise HarnessError("stop_rate: no generations")
    return sum(bool(s) for s in source.stopped) / len(source.stopped)


@statistic("generations", "eos_text_rate")
def eos_text_rate(source: GenerationSource, pair: Pair) -> float:
    """Fraction of generations whose text contains the literal text of an EOS/stop token."""
    if not source.texts:
        raise HarnessError("eos_text_rate: no generations")
    marks = [t for t in source.eos_texts if t]
    return sum(any(m in text for m in marks) for text in source.texts) / len(source.texts)


@statistic("generations", "sampled_stop_rate")
def sampled_stop_rate(source: GenerationSource, pair: Pair, *, temperature: float = 0.7, top_p: float = 0.9,
                      seed: int = 0) -> float:
    """Fraction of seeded sampled generations (same prompts and budget) that ended on a stop token."""
    return stop_rate(source.sampled(float(temperature), float(top_p), int(seed)), pair)


@statistic("generations", "loop_rate")
def loop_rate(source: GenerationSource, pair: Pair, *, n: int = 6, repeats: int = 3, sampled: bool = False,
              temperature: float = 0.7, top_p: float = 0.9, seed: int = 0) -> float:
    """Share of the runaway generations (those that hit the token budget) that are repetition loops (some
    ``n``-token n-gram at least ``repeats`` times; :func:`harness.inference.generate.is_repetition_loop`).
    0 when no generation ran away. ``sampled``: of the seeded sampled generations instead of the greedy ones."""
    from harness.inference.generate import is_repetition_loop

    src = source.sampled(float(temperature), float(top_p), int(seed)) if sampled else source
    if len(src.token_ids) != len(src.stopped) or len(src.hit_max) != len(src.stopped):
        raise NotMeasured("the generations carry no token ids")
    runaway = [ids for ids, hit in zip(src.token_ids, src.hit_max) if hit]
    if not runaway:
        return 0.0
    return sum(is_repetition_loop(ids, int(n), int(repeats)) for ids in runaway) / len(runaway)


@statistic("generations", "stop_prob")
def stop_prob(source: GenerationSource, pair: Pair, *, limit: int = 100) -> float:
    """Mean teacher-forced P(stop | reply) over the node's first ``limit`` trained replies
    (:mod:`harness.inference.stopprob`)."""
    return float(source.stop_probs(int(limit)).mean)


@statistic("generations", "stop_prob_gain")
def stop_prob_gain(source: GenerationSource, pair: Pair, *, limit: int = 100) -> float:
    """The node's P(stop | reply) minus its base's, on the same trained replies."""
    if source.base_source is None:
        raise NotMeasured("no base model to compare P(stop | reply) with")
    return stop_prob(source, pair, limit=limit) - stop_prob(source.base_source, pair, limit=limit)


def load_providers() -> None:
    """Import every kind's statistics provider (specs load their own kind's provider lazily)."""
    from harness.findings.kinds import KINDS

    for name in KINDS.names():
        KINDS.get(name).load()
