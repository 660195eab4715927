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

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

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
    """Greedy generations of one model: per output whether it stopped on a stop token, and its text."""

    stopped: Sequence[bool]
    texts: Sequence[str]
    eos_texts: Sequence[str] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        """The generation budget and how many replies ran into it (shown beside the findings)."""
        from harness.evaluate.nodes import BUDGET_SLACK

        m = self.meta
        if "max_new_tokens" not in m:
            return []
        why = (f" ({BUDGET_SLACK:g}x the longest trained reply, {m['longest_reply']} tokens)"
               if m.get("longest_reply") else "")
        return [f"{m.get('n', len(self.stopped))} prompts, budget {m['max_new_tokens']} new tokens{why}, "
                f"{m.get('hit_max', '?')} hit it"]


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
    nodes = _nodes(source, pair, refs, what)
    return source.diff(nodes[0], nodes[1], nodes[2] if len(nodes) == 3 else None)


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


def load_providers() -> None:
    """Import every kind's statistics provider (specs load their own kind's provider lazily)."""
    from harness.findings.kinds import KINDS

    for name in KINDS.names():
        KINDS.get(name).load()
