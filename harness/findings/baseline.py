"""Compare this run's findings with a stored run: the same model (a regression check, in the manner of
pytest-benchmark's --benchmark-compare-fail) or another base or plan (what changed with the model).

Only the checks both runs share are compared. Per shared check:

- a verdict flip pass -> fail is a regression: it fails the session;
- a flip fail -> pass is an improvement: reported, and fails the session only with ``--findings-strict``;
- a value move is reported. Each run's check is its aggregate across training seeds (the mean; see
  :func:`harness.findings.verdict.aggregate`). On the same model, when the baseline holds the check's
  values for two or more seeds, the move is judged by the seeds' spread: it moved when the new mean lies
  outside the baseline's 95% prediction interval for a mean of the new run's n seeds,
  ``mean_old ± t(n_old−1)·s_old·sqrt(1/n_new + 1/n_old)`` (never narrower than the spec's ``floor``).
  Otherwise (one baseline seed, or another model) the tolerance rule: a move beyond ``tolerance`` × |old|
  and beyond the absolute ``floor``, so noise on values near zero is not a move.
  On the same model a move fails the session; across models moves are the finding, and fail it only
  with ``--findings-strict``.

A verdict change to ``fail`` is a regression, ``fail`` to ``pass`` an improvement; changes from or to
``inconclusive`` are judged by the value rule. A check not measured in either run is not compared
(``Comparison.unmeasured``). Findings files of any age load: one row per seed or a single seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from harness.findings.report import load_json
from harness.findings.verdict import FAIL, PASS, Aggregate, ClaimResult, aggregate, t_quantile

REGRESSION, IMPROVEMENT, MOVE = "regression", "improvement", "move"


@dataclass(frozen=True)
class Regression:
    """One compared check that changed: ``kind`` is regression (pass -> fail), improvement or move."""

    key: tuple[str, str, str]
    kind: str
    old: ClaimResult  # each run's check as one row (the mean across its seeds)
    new: ClaimResult
    rule: str = ""  # what flagged a move: the seeds' prediction interval, else "" (the tolerance rule)

    def describe(self) -> str:
        claim, pair, check = self.key
        where = f"{claim} {check} [{pair}]"
        values = f"{self.old.measured:.4g} -> {self.new.measured:.4g}"
        if self.kind in (REGRESSION, IMPROVEMENT):
            return f"{where}: verdict {self.old.verdict} -> {self.new.verdict} ({self.kind}; measured {values})"
        delta = self.new.measured - self.old.measured
        if self.rule:
            return f"{where}: measured {values} ({delta:+.3g}; {self.rule})"
        rel = relative_change(self.old.measured, self.new.measured)
        rel_text = f"{rel:+.1%}" if math.isfinite(rel) else "from 0"
        return (f"{where}: measured {values} ({delta:+.3g}, {rel_text}; tolerance {self.new.tolerance:.0%}, "
                f"floor {self.new.floor:g})")


def relative_change(old: float, new: float) -> float:
    if old == new:
        return 0.0
    if old == 0 or not math.isfinite(old) or not math.isfinite(new):
        return math.inf
    return (new - old) / abs(old)


def moved(old: float, new: float, tolerance: float, floor: float) -> bool:
    """True when ``new`` is further from ``old`` than both ``tolerance * |old|`` and ``floor``."""
    if not (math.isfinite(old) and math.isfinite(new)):
        return not (old == new or (math.isnan(old) and math.isnan(new)))
    return abs(new - old) > max(tolerance * abs(old), floor)


def prediction_interval(old: Aggregate, n_new: int, floor: float = 0.0) -> tuple[float, float] | None:
    """The baseline's 95% prediction interval for the mean of ``n_new`` new seeds,
    ``mean_old ± t(n_old−1)·s_old·sqrt(1/n_new + 1/n_old)``, its half-width never below ``floor``; None when the
    baseline has fewer than two training seeds (rows of distinct, named seeds) or a value that is not finite."""
    n_old = old.n
    if len({r.seed for r in old.measured if r.seed is not None}) < 2 or n_old < 2 or n_new < 1 or not (math.isfinite(old.mean) and math.isfinite(old.stdev)):
        return None
    half = max(t_quantile(n_old - 1) * old.stdev * math.sqrt(1 / n_new + 1 / n_old), floor)
    return (old.mean - half, old.mean + half)


def model_of(meta: Mapping[str, Any]) -> str:
    """A run's model in words: plan, base and run id."""
    plan, base = meta.get("plan", "?"), meta.get("base")
    return f"plan {plan!r}" + (f" on base {base!r}" if base else "") + f" (run {meta.get('run', '?')})"


@dataclass
class Comparison:
    """The outcome of comparing two runs over the checks they share."""

    changes: list[Regression] = field(default_factory=list)
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # in the baseline only
    new_only: list[tuple[str, str, str]] = field(default_factory=list)  # in this run only
    unmeasured: list[tuple[str, str, str]] = field(default_factory=list)  # shared, not measured in one run
    shared: int = 0
    same_model: bool = True
    strict: bool = False
    header: str = ""

    def of(self, kind: str) -> list[Regression]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def failing(self) -> list[Regression]:
        """The changes that fail the session."""
        out = self.of(REGRESSION)
        if self.same_model or self.strict:
            out += self.of(MOVE)
        if self.strict:
            out += self.of(IMPROVEMENT)
        return out


def _same_model(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return all(old.get(k) == new.get(k) for k in ("plan", "base")) if old and new else True


def compare(current: Iterable[ClaimResult], baseline: Iterable[ClaimResult], *, old_meta: Mapping[str, Any] | None = None,
            new_meta: Mapping[str, Any] | None = None, strict: bool = False) -> Comparison:
    """Compare the checks two runs share, each aggregated across its training seeds (see the module docstring)."""
    base = {c.key: c for c in aggregate(baseline)}
    old_meta, new_meta = old_meta or {}, new_meta or {}
    out = Comparison(same_model=_same_model(old_meta, new_meta), strict=strict,
                     header=f"{model_of(new_meta)} against {model_of(old_meta)}")
    seen: set[tuple[str, str, str]] = set()
    for c in aggregate(current):
        old = base.get(c.key)
        if old is None:
            out.new_only.append(c.key)
            continue
        seen.add(c.key)
        if not (old.n and c.n):
            out.unmeasured.append(c.key)
            continue
        o, r = old.as_row(), c.as_row()
        # an informational row (verdict info) has no verdict to flip: it is compared by value below
        if r.verdict == FAIL and o.verdict != FAIL:
            out.changes.append(Regression(c.key, REGRESSION, o, r))
            continue
        if r.verdict == PASS and o.verdict == FAIL:
            out.changes.append(Regression(c.key, IMPROVEMENT, o, r))
            continue
        interval = prediction_interval(old, c.n, r.floor) if out.same_model else None
        if interval is not None:
            lo, hi = interval
            if not lo <= c.mean <= hi:
                rule = (f"outside the baseline's 95% prediction interval [{lo:.4g}, {hi:.4g}] for a mean of "
                        f"{c.n} seed(s), from its {old.n} seeds; floor {r.floor:g}")
                out.changes.append(Regression(c.key, MOVE, o, r, rule))
        elif moved(o.measured, r.measured, r.tolerance, r.floor):
            out.changes.append(Regression(c.key, MOVE, o, r))
    out.shared = len(seen)
    out.missing = [k for k in base if k not in seen]
    return out


def compare_file(current: Sequence[ClaimResult], path: Path, strict: bool = False) -> Comparison:
    meta, old = load_json(Path(path))
    return compare(current, old, old_meta=meta, strict=strict)


def format_report(c: Comparison, path: Path | str) -> list[tuple[str, str]]:
    """(line, colour) pairs for the terminal: the header naming both models, then each change."""
    lines = [(f"baseline {path}: {c.header}; {c.shared} shared check(s)"
              + ("" if c.same_model else " (another model: value moves are reported, not failed)"), "")]
    failing = set(id(x) for x in c.failing)
    if c.unmeasured:
        lines.append((f"  {len(c.unmeasured)} shared check(s) not measured in one of the runs (not compared): "
                      + ", ".join(f"{k[0]} {k[2]} [{k[1]}]" for k in c.unmeasured), "yellow"))
    for kind, title in ((REGRESSION, "regressed"), (MOVE, "moved beyond tolerance"), (IMPROVEMENT, "improved")):
        for ch in c.of(kind):
            colour = "red" if id(ch) in failing else ("green" if kind == IMPROVEMENT else "yellow")
            lines.append((f"  {title}: {ch.describe()}", colour))
    if c.failing:
        lines.append((f"Findings have regressed against {path}: {len(c.failing)} change(s) fail the session"
                      " although the tests passed" + (" (--findings-strict)" if c.strict else ""), "red"))
    elif not c.changes:
        lines.append((f"no regression against {path}", "green"))
    return lines


def format_failure(regressions: Sequence[Regression], path: Path) -> str:
    """The compare-fail message: one line per regressed row."""
    lines = [f"Findings have regressed against {path}:"]
    lines += ["\t" + r.describe() for r in regressions]
    return "\n".join(lines)
