"""Claim results: one row per (claim, pair, check) and training seed; one aggregate per check across seeds.

``evaluate(spec, source, pair)`` runs each check of a spec through its statistic and returns
:class:`ClaimResult` rows. Claim files that compute their value another way build a row with
:meth:`ClaimResult.make` and hand it to the ``claim_result`` fixture (the findings session's
``record``), so it shows up in the terminal summary and the findings files.

Verdicts: ``pass``, ``fail``, ``inconclusive`` and ``not measured``. A row (one seed) passes or fails
by its comparison; a statistic that cannot be measured here (it raised
:class:`~harness.findings.statistics.NotMeasured`) gives a ``not measured`` row with the reason in its
``note`` and ``measured`` NaN. :func:`aggregate` groups the rows of a (claim, pair, check) across
training seeds into an :class:`Aggregate`: n, per-seed values, mean, stdev, min, max and the 95%
interval of the mean (Student t, n-1 degrees of freedom). Its verdict:

- no measured seed: ``not measured``;
- one measured seed: that row's verdict;
- two or more: ``inconclusive`` when the seeds' verdicts disagree, or when the threshold lies strictly
  inside the 95% interval of the mean; else ``pass``/``fail`` by the mean, which is the seeds' common
  verdict (the mean of values on one side of a threshold is on that side).

An inconclusive check does not fail its case or the session (a pytest warning names its interval)
unless ``--findings-strict``; a not-measured check never fails anything.
"""

from __future__ import annotations

import math
import statistics as pystats
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from harness.findings.spec import COMPARATORS, Check, ClaimSpec, Pair

PASS, FAIL, ERROR = "pass", "fail", "error"
INFO = "info"  # an informational check's row: reported, never a pass or a fail of the claim
INCONCLUSIVE, NOT_MEASURED = "inconclusive", "not measured"
#: the verdicts a summary counts, in its order
VERDICTS = (PASS, FAIL, INCONCLUSIVE, NOT_MEASURED)
#: the confidence of an aggregate's interval of the mean (and of a baseline's prediction interval)
CONFIDENCE = 0.95


class InconclusiveWarning(UserWarning):
    """A check whose training seeds do not settle its verdict (see :func:`assert_holds`)."""


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

    @classmethod
    def not_measured(cls, claim: str, pair: str, threshold: float, comparator: str, reason: str, *,
                     check: str = "", reference_value: float | None = None, plan: str = "",
                     seed: int | None = None, tolerance: float = 0.25, floor: float = 0.0) -> "ClaimResult":
        """A row for a check that could not be measured here: measured NaN, the reason in ``note``."""
        return cls(claim, pair, check or claim, math.nan, float(threshold), comparator, reference_value, math.nan,
                   NOT_MEASURED, plan, seed, tolerance, reason, floor)

    @property
    def passed(self) -> bool:
        """True unless the row fails its claim (an informational row never does)."""
        return self.verdict in (PASS, INFO)

    @property
    def measured_here(self) -> bool:
        """False for a ``not measured`` row."""
        return self.verdict != NOT_MEASURED

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

    A statistic raising :class:`~harness.findings.statistics.NotMeasured` gives a ``not measured`` row whose
    ``note`` says why (measured NaN); ``warn``, when given, is told too.

    When ``source`` offers a ``base_source`` (the same kind of source for the graph's base model), each row's
    ``base_value`` is the same statistic on it (None where the base cannot be measured)."""
    from harness.findings.statistics import STATISTICS, NotMeasured

    rows = []
    for check in spec.checks:
        fn = STATISTICS.get(check.statistic)
        try:
            measured = float(fn(source, pair, **check.kwargs()))
        except NotMeasured as exc:
            reason = str(exc) or type(exc).__name__
            if warn is not None:
                warn(f"{spec.id} {check.name} on {pair.label}: not measured ({reason})")
            rows.append(ClaimResult.not_measured(spec.id, pair.label, check.threshold, check.comparator, reason,
                                                 check=check.name, reference_value=check.reference_for(pair.label),
                                                 plan=plan, seed=seed, tolerance=check.tolerance, floor=check.floor))
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


def t_two_sided(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``dof`` (Abramowitz & Stegun 26.7.3 and 26.7.4, exact)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(dof))
    c2, sin, cos = math.cos(theta) ** 2, math.sin(theta), math.cos(theta)
    if dof % 2:  # odd: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(1, (dof - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return min(1.0, 2 / math.pi * (theta + sin * cos * total))
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, dof // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return min(1.0, sin * total)


def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t quantile: ``t`` with P(|T| <= t) = ``confidence`` for ``dof`` degrees of freedom
    (pure Python, so that no numerical library is imported while a report is written)."""
    if dof < 1 or not 0 < confidence < 1:
        raise ValueError(f"t quantile needs dof >= 1 and 0 < confidence < 1, got {dof}, {confidence}")
    lo, hi = 0.0, 1.0
    while t_two_sided(hi, dof) < confidence:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_two_sided(mid, dof) < confidence else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Aggregate:
    """One (claim, pair, check) across training seeds: its rows, their values and the aggregate verdict."""

    rows: tuple[ClaimResult, ...]  # every seed's row, not-measured ones included
    verdict: str
    mean: float
    stdev: float  # sample stdev of the measured values (0 for one value)
    interval: tuple[float, float] | None  # 95% interval of the mean (None below two measured seeds)

    @property
    def first(self) -> ClaimResult:
        return self.rows[0]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.first.key

    @property
    def measured(self) -> tuple[ClaimResult, ...]:
        """The rows that were measured."""
        return tuple(r for r in self.rows if r.measured_here)

    @property
    def n(self) -> int:
        """How many seeds measured the check."""
        return len(self.measured)

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(r.measured for r in self.measured)

    @property
    def verdicts(self) -> tuple[str, ...]:
        return tuple(r.verdict for r in self.rows)

    @property
    def seeds(self) -> tuple[int | None, ...]:
        return tuple(r.seed for r in self.rows)

    @property
    def agree(self) -> bool:
        return len({r.verdict for r in self.measured}) <= 1

    @property
    def control(self) -> bool:
        """A negative control's check (expected to fail)."""
        return self.first.note.startswith("negative control")

    @property
    def note(self) -> str:
        notes = dict.fromkeys(r.note for r in self.rows if r.note)
        missing = [r for r in self.rows if not r.measured_here]
        if missing and self.measured:
            notes[f"not measured on training seed(s) {', '.join(str(r.seed) for r in missing)}"] = None
        return "; ".join(notes)

    def as_row(self) -> ClaimResult:
        """The check as one row: measured = the mean, margin from the mean, the aggregate verdict, no seed
        (the first seed's row otherwise, so that every other field carries over)."""
        base = self.measured[0] if self.measured else self.first
        if len(self.rows) == 1:
            return base
        c = Check(statistic=base.check, comparator=base.comparator, threshold=base.threshold, reason="-")
        margin = c.margin(self.mean) if not math.isnan(self.mean) else math.nan
        return replace(base, measured=self.mean, margin=margin, verdict=self.verdict, seed=None, note=self.note,
                       base_value=self.base_value)

    @property
    def base_value(self) -> float | None:
        """The mean over the seeds of the same statistic on each seed's base (None when no row has one)."""
        values = [r.base_value for r in self.rows if r.base_value is not None]
        return pystats.fmean(values) if values else None

    def describe(self) -> str:
        r = self.as_row()
        spread = ""
        if self.interval is not None:
            lo, hi = self.interval
            spread = (f" (mean of {self.n} seeds, 95% interval [{lo:.4g}, {hi:.4g}]; per seed "
                      f"{', '.join(f'{v:.4g}' for v in self.values)}: {', '.join(self.verdicts)})")
        why = f" ({self.note})" if self.verdict == NOT_MEASURED and self.note else ""
        return (f"{r.claim} {r.check} on {r.pair}: measured {r.measured:.4g}{spread}, needs {r.comparator} "
                f"{r.threshold:g}: {self.verdict}{why}")

    def to_dict(self) -> dict[str, Any]:
        r = self.as_row()

        def num(x: float) -> float | str:
            return x if math.isfinite(x) else str(x)  # JSON has no NaN/inf

        return {"claim": r.claim, "pair": r.pair, "check": r.check, "plan": r.plan, "verdict": self.verdict,
                "n": self.n, "seeds": list(self.seeds), "values": [num(v) for v in self.values],
                "verdicts": list(self.verdicts), "mean": num(self.mean), "stdev": num(self.stdev),
                "min": num(min(self.values)) if self.values else "nan",
                "max": num(max(self.values)) if self.values else "nan",
                "interval": [num(x) for x in self.interval] if self.interval else None,
                "threshold": r.threshold, "comparator": r.comparator, "reference_value": r.reference_value,
                "margin": num(r.margin), "tolerance": r.tolerance, "floor": r.floor, "note": self.note,
                "base_value": None if self.base_value is None else num(self.base_value)}


def stdev(values: Sequence[float]) -> float:
    """The sample standard deviation: 0 for one value, NaN when a value is not finite (or none is given)."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan
    return pystats.stdev(values) if len(values) > 1 else 0.0


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``confidence`` interval of the mean of ``values`` (Student t, n-1 dof); None below two values."""
    n = len(values)
    if n < 2:
        return None
    m, s = pystats.fmean(values), stdev(values)
    half = t_quantile(n - 1, confidence) * s / math.sqrt(n)
    return (m - half, m + half)


def aggregate_verdict(values: Sequence[float], verdicts: Sequence[str], threshold: float, comparator: str) -> str:
    """The verdict of one check across training seeds (the rule in this module's docstring)."""
    if not verdicts:
        return NOT_MEASURED
    if len(verdicts) == 1 or set(verdicts) == {INFO}:  # an informational check has no verdict to settle
        return verdicts[0]
    if len(set(verdicts)) > 1:
        return INCONCLUSIVE
    interval = mean_interval(values)
    if interval is not None and interval[0] < threshold < interval[1]:
        return INCONCLUSIVE
    # the seeds agree: their mean lies on their side of the threshold (a half-line holds the mean of its
    # points), so the verdict by the mean is theirs; taking theirs keeps a stored row's verdict as written
    return verdicts[0]


def aggregate(results: Iterable[ClaimResult]) -> list[Aggregate]:
    """Group rows by (claim, pair, check) across training seeds, in first-seen order, each with its verdict."""
    groups: dict[tuple[str, str, str], list[ClaimResult]] = {}
    for r in results:
        groups.setdefault(r.key, []).append(r)
    out = []
    for rows in groups.values():
        done = [r for r in rows if r.measured_here]
        values = [r.measured for r in done]
        mean = pystats.fmean(values) if values else math.nan
        first = rows[0]
        verdict = aggregate_verdict(values, [r.verdict for r in done], first.threshold, first.comparator)
        out.append(Aggregate(tuple(rows), verdict, mean, stdev(values), mean_interval(values)))
    return out


def counts(checks: Iterable[Aggregate]) -> dict[str, int]:
    """How many checks have each verdict (pass, fail, inconclusive, not measured, then any other)."""
    out = dict.fromkeys(VERDICTS, 0)
    for c in checks:
        out[c.verdict] = out.get(c.verdict, 0) + 1
    return out


def summary_line(checks: Sequence[Aggregate]) -> str:
    """``findings: 30 pass, 2 fail, 3 inconclusive, 1 not measured`` over the claims' checks, then the
    negative controls' checks (expected to fail) in their own clause."""
    claims = [c for c in checks if not c.control]
    controls = [c for c in checks if c.control]
    line = "findings: " + ", ".join(f"{n} {v}" for v, n in counts(claims).items())
    if controls:
        line += "; negative controls: " + ", ".join(f"{n} {v}" for v, n in counts(controls).items() if n)
    return line


def assert_holds(results: Iterable[ClaimResult], detail: str = "", *, strict: bool = False) -> None:
    """Fail the calling test, naming each failing check (and ``detail``), when a check fails across its
    training seeds (:func:`aggregate`). An inconclusive check gives an :class:`InconclusiveWarning` naming
    its interval, or fails under ``strict`` (``--findings-strict``); a not-measured one is left alone."""
    checks = aggregate(results)
    bad = [c for c in checks if c.verdict == FAIL or c.verdict not in VERDICTS + (INFO,)]
    unsure = [c for c in checks if c.verdict == INCONCLUSIVE]
    if strict:
        bad += unsure
    elif unsure:
        import warnings

        for c in unsure:
            warnings.warn(InconclusiveWarning(f"inconclusive: {c.describe()}"), stacklevel=2)
    if bad:
        raise AssertionError("claim does not hold" + (" (--findings-strict: inconclusive fails)" if strict and unsure
                                                      else "") + ":\n  " + "\n  ".join(c.describe() for c in bad)
                             + (f"\n{detail}" if detail else ""))
