"""Claim results: one row per (claim, pair, check), and the session collector.

``evaluate(spec, source, pair)`` runs each check of a spec through its statistic and returns
:class:`ClaimResult` rows. Claim files that compute their value another way build a row with
:meth:`ClaimResult.make` and hand it to :func:`record` (or the ``claim_result`` fixture), so it
shows up in the terminal summary and the findings files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from harness.findings.spec import COMPARATORS, Check, ClaimSpec, Pair

PASS, FAIL, ERROR = "pass", "fail", "error"


@dataclass(frozen=True)
class ClaimResult:
    """What a claim measured on one pair, against the threshold and the seed's value."""

    claim: str
    pair: str
    check: str
    measured: float
    threshold: float
    comparator: str
    seed_value: float | None
    margin: float
    verdict: str
    plan: str = ""
    seed: int | None = None
    tolerance: float = 0.25
    note: str = ""

    @classmethod
    def make(cls, claim: str, pair: str, measured: float, threshold: float, comparator: str, *,
             seed_value: float | None = None, check: str = "", plan: str = "", seed: int | None = None,
             tolerance: float = 0.25, note: str = "") -> "ClaimResult":
        """Build a row, computing margin (positive = holds) and verdict from the comparison."""
        if comparator not in COMPARATORS:
            raise ValueError(f"comparator {comparator!r} is not one of {', '.join(COMPARATORS)}")
        c = Check(statistic=check or claim, comparator=comparator, threshold=float(threshold), reason="-")
        measured = float(measured)
        ok = c.holds(measured)
        margin = c.margin(measured) if not math.isnan(measured) else math.nan
        return cls(claim, pair, check or claim, measured, float(threshold), comparator, seed_value, margin,
                   PASS if ok else FAIL, plan, seed, tolerance, note)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity across runs (the training seed is not part of it)."""
        return (self.claim, self.pair, self.check)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("measured", "margin"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = str(d[k])  # JSON has no NaN/inf
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClaimResult":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("measured", "margin"):
            if isinstance(kw.get(k), str):
                kw[k] = float(kw[k])
        return cls(**kw)

    def describe(self) -> str:
        seed = f" (seed value {self.seed_value:g})" if self.seed_value is not None else ""
        return (f"{self.claim} {self.check} on {self.pair}: measured {self.measured:.4g}, "
                f"needs {self.comparator} {self.threshold:g}{seed}: {self.verdict}")


def evaluate(spec: ClaimSpec, source: Any, pair: Pair, *, plan: str = "", seed: int | None = None) -> list[ClaimResult]:
    """Run every check of ``spec`` on ``pair``; a statistic's error propagates (names the claim)."""
    from harness.findings.statistics import STATISTICS

    rows = []
    for check in spec.checks:
        fn = STATISTICS.get(check.statistic)
        measured = float(fn(source, pair, **check.kwargs()))
        rows.append(ClaimResult.make(spec.id, pair.label, measured, check.threshold, check.comparator,
                                     seed_value=check.seed_for(pair.label), check=check.name, plan=plan, seed=seed,
                                     tolerance=check.tolerance))
    return rows


# ---- session collector -------------------------------------------------------------------
# A stack, so that a pytest session run inside another one (pytester) keeps its own rows.

_STACK: list[list[ClaimResult]] = [[]]


def record(results: ClaimResult | Iterable[ClaimResult]) -> None:
    """Add result rows to this session's findings (terminal summary, JSON/Markdown files)."""
    if isinstance(results, ClaimResult):
        results = [results]
    _STACK[-1].extend(results)


def recorded() -> list[ClaimResult]:
    """The rows recorded in the current session so far."""
    return list(_STACK[-1])


def clear() -> None:
    _STACK[-1].clear()


def push_session() -> None:
    """Start collecting for a new (possibly nested) session."""
    _STACK.append([])


def pop_session() -> list[ClaimResult]:
    """Stop collecting for the innermost session and return its rows."""
    return _STACK.pop() if len(_STACK) > 1 else list(_STACK[0])


def assert_holds(results: Iterable[ClaimResult]) -> None:
    """Fail the calling test, naming each failing check, unless every row passes."""
    bad = [r for r in results if not r.passed]
    if bad:
        raise AssertionError("claim does not hold:\n  " + "\n  ".join(r.describe() for r in bad))
