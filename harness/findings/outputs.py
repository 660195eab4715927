"""The output claims' statistics (kinds ``similarity`` and ``judge``), registered with the findings.

The measurements themselves are plain functions of :mod:`harness.evaluate.claims` (below the
findings); this module only names them for ``fixtures/claims/c7_*.toml`` and ``c8_*.toml``, like
:mod:`harness.findings.statistics` names the weight and generation statistics.
"""

from __future__ import annotations

import math
from typing import Any

from harness.errors import HarnessError
from harness.evaluate.claims import c7_margins
from harness.findings.kinds import statistic
from harness.findings.statistics import NotMeasured


@statistic("similarity", "own_data_margin")
def own_data_margin(source: Any, pair: Any, metric: str = "BLEU") -> float:
    """C7: ``metric(own dataset) - metric(other dataset)`` of the pair's node in a table 24."""
    node, own = pair["node"], pair["own"]
    if own not in ("d0", "d1"):
        raise HarnessError(f"C7 pair {pair.label}: 'own' must be d0 or d1, got {own!r}")
    [m] = [m for m in c7_margins(source, {node: own}) if m.metric == metric] or [None]
    if m is None:
        raise NotMeasured("; ".join(getattr(source, "notes", ())) or f"the table has no {metric} for {node}")
    return m.measured


@statistic("judge", "judge_margin")
def judge_margin(source: Any, pair: Any, prompts: str = "eval") -> float:
    """C8: the node's mean judge score minus the base's, sign-flipped for D0 nodes (so > 0 holds)."""
    means = source[prompts]
    node, base, ds = pair["node"], pair.get("base", "base"), pair["data"]
    if means.get(node) is None or means.get(base) is None:
        return math.nan
    diff = means[node] - means[base]
    return diff if ds == "d1" else -diff
