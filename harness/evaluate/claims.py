"""The output claims' statistics, kept out of the check files so that they can be tested alone.

- C7 (seed table 24): each SFT node trained on D0 or D1 is more similar to that dataset's replies
  than to the other's: ``metric(own) - metric(other) > 0``, for BLEU and (when loaded) BERTScore.
- C8 (seed table 25): the mean judge score of nodes whose last training data is D1 is above the
  base's, and that of nodes whose last data is D0 is below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

#: Seed table 24 (000, BLEU/BERTScore of SFT_D0 and SFT_D1): own minus other.
C7_REFERENCE = {
    ("sft_d0", "BLEU"): 0.10713 - 0.02214,
    ("sft_d1", "BLEU"): 0.09295 - 0.01768,
    ("sft_d0", "BERTScore"): 0.79208 - 0.76002,
    ("sft_d1", "BERTScore"): 0.78445 - 0.74124,
}
#: Seed table 25, dataset queries (202): node mean minus base mean (6.62).
C8_SEED = {"sft_d1": 8.60 - 6.62, "dpo_d1": 8.27 - 6.62, "dpo_d1@sft_d2": 8.23 - 6.62,
           "sft_d0": 5.81 - 6.62, "dpo_d0": 5.57 - 6.62, "dpo_d0@sft_d2": 5.37 - 6.62}


@dataclass(frozen=True)
class Margin:
    """One measured difference for one node (positive = the claim's direction)."""

    node: str
    metric: str
    measured: float
    seed: Optional[float]


def sft_nodes_by_data(plan: Any) -> dict[str, str]:
    """``{node: "d0"|"d1"}`` for the plan's SFT nodes trained on D0 or D1."""
    return {n.name: n.dataset for n in plan.nodes if n.method == "sft" and n.dataset in ("d0", "d1")}


def last_data(plan: Any) -> dict[str, str]:
    """``{node: dataset}`` for every trained node (the data of its own, i.e. last, training step)."""
    return {n.name: n.dataset for n in plan.nodes if n.method in ("sft", "dpo") and n.dataset}


def c7_margins(table24: Any, nodes: Mapping[str, str]) -> list[Margin]:
    """Own-minus-other BLEU and BERTScore for each SFT node (BERTScore only when the table has it)."""
    out = []
    for node, own in nodes.items():
        other = "d1" if own == "d0" else "d0"
        for metric in ("BLEU", "BERTScore"):
            a = table24.cell(node, f"{metric}({own.upper()})")
            b = table24.cell(node, f"{metric}({other.upper()})")
            if a is None or b is None:
                continue
            out.append(Margin(node, metric, a - b, C7_REFERENCE.get((node, metric))))
    return out


def c8_margins(means: Mapping[str, Optional[float]], data_of: Mapping[str, str], base: str = "base") -> list[Margin]:
    """Signed score differences to the base: ``mean - base`` for D1 nodes, ``base - mean`` for D0 nodes."""
    if means.get(base) is None:
        raise ValueError(f"no judge score for {base!r}")
    out = []
    for node, ds in data_of.items():
        m = means.get(node)
        if m is None or ds not in ("d0", "d1"):
            continue
        diff = m - means[base]
        seed = C8_SEED.get(node)
        if ds == "d0":
            out.append(Margin(node, "base - score", -diff, None if seed is None else -seed))
        else:
            out.append(Margin(node, "score - base", diff, seed))
    return out


def mean_by_node(results: Mapping[str, Sequence[Any]]) -> dict[str, Optional[float]]:
    from harness.evaluate.judge import mean_score

    return {n: mean_score(r) for n, r in results.items()}
