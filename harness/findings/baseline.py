"""Regression check against a stored findings run, in the manner of pytest-benchmark's --benchmark-compare-fail.

A row regresses when its verdict flips, or when its measured value moves by more than the row's
relative ``tolerance`` (taken from the claim spec) away from the baseline value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from harness.findings.report import load_json
from harness.findings.verdict import ClaimResult


@dataclass(frozen=True)
class Regression:
    key: tuple[str, str, str]
    kind: str  # "verdict" or "value"
    old: ClaimResult
    new: ClaimResult

    def describe(self) -> str:
        claim, pair, check = self.key
        where = f"{claim} {check} [{pair}]"
        if self.kind == "verdict":
            return (f"{where}: verdict flipped {self.old.verdict} -> {self.new.verdict} "
                    f"(measured {self.old.measured:.4g} -> {self.new.measured:.4g})")
        change = relative_change(self.old.measured, self.new.measured)
        return (f"{where}: measured {self.old.measured:.4g} -> {self.new.measured:.4g} "
                f"({change:+.1%}, tolerance {self.new.tolerance:.0%})")


def relative_change(old: float, new: float) -> float:
    if old == new:
        return 0.0
    if old == 0 or not math.isfinite(old) or not math.isfinite(new):
        return math.inf
    return (new - old) / abs(old)


def compare(current: Iterable[ClaimResult], baseline: Iterable[ClaimResult]) -> tuple[list[Regression], list[tuple[str, str, str]]]:
    """Return the regressions, and the baseline keys absent from this run (not failures)."""
    base = {}
    for r in baseline:
        base.setdefault(r.key, r)  # with several training seeds, the first one is the reference
    seen, out = set(), []
    for r in current:
        old = base.get(r.key)
        if old is None:
            continue
        seen.add(r.key)
        if old.verdict != r.verdict:
            out.append(Regression(r.key, "verdict", old, r))
        elif abs(relative_change(old.measured, r.measured)) > r.tolerance:
            out.append(Regression(r.key, "value", old, r))
    return out, [k for k in base if k not in seen]


def compare_file(current: Sequence[ClaimResult], path: Path) -> tuple[list[Regression], list[tuple[str, str, str]]]:
    _, old = load_json(Path(path))
    return compare(current, old)


def format_failure(regressions: Sequence[Regression], path: Path) -> str:
    """The compare-fail message: one line per regressed row."""
    lines = [f"Findings have regressed against {path}:"]
    lines += ["\t" + r.describe() for r in regressions]
    return "\n".join(lines)
