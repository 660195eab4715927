"""Claim results: one row per (claim, pair, check).

``evaluate(spec, source, pair)`` runs each check of a spec through its statistic and returns
:class:`ClaimResult` rows. Claim files that compute their value another way build a row with
:meth:`ClaimResult.make` and hand it to the ``claim_result`` fixture (the findings session's
``record``), so it shows up in the terminal summary and the findings files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Mapping

from harness.findings.spec import COMPARATORS, Check, ClaimSpec, Pair

PASS, FAIL, ERROR = "pass", "fail", "error"
INFO = "info"  # an informational check's row: reported, never a pass or a fail of the claim


@dataclass(frozen=True)
class ClaimResult:
    """What a claim measured on one pair, against the threshold and the study's value."""

    claim: str
    pair: str
    check: str
    measured: float
    threshold: float
    comparator: str
    reference_value: float | None
    margin: float
    verdict: str
    plan: str = ""
    seed: int | None = None  # the training seed (None: a single-seed run)
    tolerance: float = 0.25
    note: str = ""
    floor: float = 0.0  # absolute move a baseline comparison ignores (values near zero)
    base_value: float | None = None  # the same statistic on the graph's base model (None: not measured there)

    @classmethod
    def make(cls, claim: str, pair: str, measured: float, threshold: float, comparator: str, *,
             reference_value: float | None = None, check: str = "", plan: str = "", seed: int | None = None,
             tolerance: float = 0.25, note: str = "", floor: float = 0.0,
             seed_value: float | None = None, base_value: float | None = None,
             informational: bool = False) -> "ClaimResult":
        """Build a row, computing margin (positive = holds) and verdict from the comparison
        (:data:`INFO` for an ``informational`` check).

        ``seed_value`` is the old name of ``reference_value`` (kept for existing callers)."""
        if reference_value is None:
            reference_value = seed_value
        if comparator not in COMPARATORS:
            raise ValueError(f"comparator {comparator!r} is not one of {', '.join(COMPARATORS)}")
        c = Check(statistic=check or claim, comparator=comparator, threshold=float(threshold), reason="-")
        measured = float(measured)
        ok = c.holds(measured)
        margin = c.margin(measured) if not math.isnan(measured) else math.nan
        verdict = INFO if informational else PASS if ok else FAIL
        return cls(claim, pair, check or claim, measured, float(threshold), comparator, reference_value, margin,
                   verdict, plan, seed, tolerance, note, floor, base_value)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity across runs (the training seed is not part of it)."""
        return (self.claim, self.pair, self.check)

    @property
    def passed(self) -> bool:
        """True unless the row fails its claim (an informational row never does)."""
        return self.verdict in (PASS, INFO)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("measured", "margin", "base_value"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = str(d[k])  # JSON has no NaN/inf
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClaimResult":
        names = {f.name for f in fields(cls)}
        d = dict(d)
        if "seed_value" in d and "reference_value" not in d:  # findings files written before the rename
            d["reference_value"] = d.pop("seed_value")
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("measured", "margin", "base_value"):
            if isinstance(kw.get(k), str):
                kw[k] = float(kw[k])
        return cls(**kw)

    def describe(self) -> str:
        ref = f" (reference value {self.reference_value:g})" if self.reference_value is not None else ""
        seed = f" [training seed {self.seed}]" if self.seed is not None else ""
        return (f"{self.claim} {self.check} on {self.pair}{seed}: measured {self.measured:.4g}, "
                f"needs {self.comparator} {self.threshold:g}{ref}: {self.verdict}")


def evaluate(spec: ClaimSpec, source: Any, pair: Pair, *, plan: str = "", seed: int | None = None,
             warn: Callable[[str], None] | None = None) -> list[ClaimResult]:
    """Run every check of ``spec`` on ``pair``; a statistic's error propagates (names the claim).

    A statistic raising :class:`~harness.findings.statistics.NotMeasured` leaves its check out; ``warn``
    (default: ``warnings.warn``) is told why, so it is said out loud and not dropped in silence.

    When ``source`` offers a ``base_source`` (the same kind of source for the graph's base model), each row's
    ``base_value`` is the same statistic on it (None where the base cannot be measured)."""
    from harness.findings.statistics import STATISTICS, NotMeasured

    rows = []
    for check in spec.checks:
        fn = STATISTICS.get(check.statistic)
        try:
            measured = float(fn(source, pair, **check.kwargs()))
        except NotMeasured as exc:
            msg = f"{spec.id} {check.name} on {pair.label}: not measured ({exc})"
            if warn is None:
                import warnings

                warnings.warn(msg, stacklevel=2)
            else:
                warn(msg)
            continue
        rows.append(ClaimResult.make(spec.id, pair.label, measured, check.threshold, check.comparator,
                                     reference_value=check.reference_for(pair.label), check=check.name, plan=plan,
                                     seed=seed, tolerance=check.tolerance, floor=check.floor,
                                     base_value=_base_value(fn, source, pair, check, NotMeasured),
                                     informational=check.informational))
    return rows


def _base_value(fn: Callable[..., float], source: Any, pair: Pair, check: Check, not_measured: type) -> float | None:
    base = getattr(source, "base_source", None)
    if base is None:
        return None
    try:
        return float(fn(base, pair, **check.kwargs()))
    except not_measured:
        return None


def assert_holds(results: Iterable[ClaimResult], detail: str = "") -> None:
    """Fail the calling test, naming each failing check (and ``detail``), unless every row passes."""
    bad = [r for r in results if not r.passed]
    if bad:
        raise AssertionError("claim does not hold:\n  " + "\n  ".join(r.describe() for r in bad)
                             + (f"\n{detail}" if detail else ""))
