"""Compare this run's findings with a stored run: the same model (a regression check, in the manner of
pytest-benchmark's --benchmark-compare-fail) or another base or plan (what changed with the model).

Only the checks both runs share are compared. Per shared check:

- a verdict flip pass -> fail is a regression: it fails the session;
- a flip fail -> pass is an improvement: reported, and fails the session only with ``--findings-strict``;
- a value move beyond the check's tolerance is reported: relative (``tolerance``) for values away from
  zero, but never below the spec's absolute ``floor``, so noise on values near zero is not a move.
  On the same model a move fails the session; across models moves are the finding, and fail it only
  with ``--findings-strict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from harness.findings.report import load_json
from harness.findings.verdict import INFO, ClaimResult

REGRESSION, IMPROVEMENT, MOVE = "regression", "improvement", "move"


@dataclass(frozen=True)
class Regression:
    """One compared check that changed: ``kind`` is regression (pass -> fail), improvement or move."""

    key: tuple[str, str, str]
    kind: str
    old: ClaimResult
    new: ClaimResult

    def describe(self) -> str:
        claim, pair, check = self.key
        where = f"{claim} {check} [{pair}]"
        values = f"{self.old.measured:.4g} -> {self.new.measured:.4g}"
        if self.kind in (REGRESSION, IMPROVEMENT):
            return f"{where}: verdict {self.old.verdict} -> {self.new.verdict} ({self.kind}; measured {values})"
        delta = self.new.measured - self.old.measured
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
    """Compare the rows of two runs on the keys they share (the first training seed of each)."""
    base: dict[tuple[str, str, str], ClaimResult] = {}
    for r in baseline:
        base.setdefault(r.key, r)  # with several training seeds, the first one is the reference
    old_meta, new_meta = old_meta or {}, new_meta or {}
    out = Comparison(same_model=_same_model(old_meta, new_meta), strict=strict,
                     header=f"{model_of(new_meta)} against {model_of(old_meta)}")
    seen: set[tuple[str, str, str]] = set()
    for r in current:
        if r.key in seen:
            continue
        old = base.get(r.key)
        if old is None:
            out.new_only.append(r.key)
            continue
        seen.add(r.key)
        if old.verdict != r.verdict and INFO not in (old.verdict, r.verdict):  # an informational row has no verdict
            kind = IMPROVEMENT if r.passed else REGRESSION
            out.changes.append(Regression(r.key, kind, old, r))
        elif moved(old.measured, r.measured, r.tolerance, r.floor):
            out.changes.append(Regression(r.key, MOVE, old, r))
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
