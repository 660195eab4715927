"""The audit's result: the codes it reported, aggregated per code, with the audited sequences kept for the view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from harness.audit.codes import CODES, ERROR, IGNORE, Hit
from harness.audit.pipelines import Trained

MAX_LISTED = 50  # example indices (and their positions) kept per finding


@dataclass
class Finding:
    """One finding code over the whole dataset (per pipeline, DPO side and severity)."""

    code: str
    severity: str
    pipeline: str
    side: Optional[str]
    examples: list[int] = field(default_factory=list)
    positions: dict[int, list[int]] = field(default_factory=dict)
    detail: str = ""
    count: int = 0

    @property
    def message(self) -> str:
        base = CODES.get(self.code).message
        return f"{base}: {self.detail}" if self.detail else base

    @property
    def hint(self) -> str:
        return CODES.get(self.code).hint

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"code": self.code, "severity": self.severity, "count": self.count,
                             "examples": self.examples, "message": self.message, "hint": self.hint,
                             "pipeline": self.pipeline,
                             "positions": {str(k): v for k, v in self.positions.items()}}
        if self.side:
            d["side"] = self.side
        return d


@dataclass
class Audited:
    """One audited sequence: what the pipeline trains on plus the hits found in it."""

    pipeline: str
    seq: Trained
    hits: list[Hit]


@dataclass(frozen=True)
class RunStats:
    """Whole-dataset statistics of one pipeline (and DPO side)."""

    pipeline: str
    side: Optional[str]
    sequences: int
    trained_min: int  # trained tokens per example
    trained_median: float
    trained_max: int
    truncated: int  # sequences cut by max_length
    dropped: int  # examples the pipeline dropped
    share: dict  # finding code -> share of sequences that have it

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("pipeline", "sequences", "trained_min", "trained_median", "trained_max",
                                           "truncated", "dropped", "share")}
        if self.side:
            d["side"] = self.side
        return d


def run_stats(audited: list[Audited]) -> list[RunStats]:
    """Statistics per (pipeline, side) over every audited sequence."""
    import statistics

    groups: dict[tuple, list[Audited]] = {}
    for a in audited:
        groups.setdefault((a.pipeline, a.seq.side), []).append(a)
    out = []
    for (pipe, side), items in groups.items():
        counts = [sum(1 for lab in a.seq.labels if lab != IGNORE) for a in items]
        codes: dict[str, int] = {}
        for a in items:
            for c in {h.code for h in a.hits}:
                codes[c] = codes.get(c, 0) + 1
        n = len(items)
        out.append(RunStats(pipe, side, n, min(counts), float(statistics.median(counts)), max(counts),
                            sum(1 for a in items if a.seq.full is not None),
                            sum(1 for a in items if a.seq.dropped),
                            {c: round(k / n, 4) for c, k in sorted(codes.items())}))
    return out


@dataclass
class AuditReport:
    """Result of :func:`harness.audit.audit`; ``to_dict()`` is the ``--json`` schema."""

    tokenizer: str
    pipeline: str
    examples: int
    findings: list[Finding]
    sequences: list[Audited]
    notes: list[str] = field(default_factory=list)
    tok: Any = field(default=None, repr=False)  # the tokenizer as audited (for the view)
    info: Any = field(default=None, repr=False)  # its TokenInfo

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != ERROR]

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    @property
    def verdict(self) -> str | list[str]:
        """``"clean"`` when nothing was found, else the sorted finding codes."""
        return sorted(self.codes) or "clean"

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def finding(self, code: str, side: Optional[str] = None) -> Optional[Finding]:
        return next((f for f in self.findings if f.code == code and (side is None or f.side == side)), None)

    @property
    def ok(self) -> bool:
        """True when no error-level finding was made (warnings allowed): what a pre-flight gates on."""
        return not self.errors

    @property
    def stats(self) -> list[RunStats]:
        """Whole-dataset statistics per pipeline (and DPO side)."""
        return run_stats(self.sequences)

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "pipeline": self.pipeline, "examples": self.examples,
                "findings": [f.to_dict() for f in self.findings], "notes": self.notes,
                "stats": [s.to_dict() for s in self.stats]}


def aggregate(audited: list[Audited]) -> list[Finding]:
    """Group hits by (pipeline, side, code, severity), errors first, in code-registry order."""
    groups: dict[tuple, Finding] = {}
    for a in audited:
        for h in a.hits:
            key = (a.pipeline, a.seq.side, h.code, h.severity)
            f = groups.get(key)
            if f is None:
                f = groups[key] = Finding(h.code, h.severity, a.pipeline, a.seq.side, detail=h.detail)
            f.count += 1
            if len(f.examples) < MAX_LISTED and a.seq.index not in f.positions:
                f.examples.append(a.seq.index)
                f.positions[a.seq.index] = list(h.positions)
    order = {c: i for i, c in enumerate(CODES._items)}
    return sorted(groups.values(), key=lambda f: (f.severity != ERROR, f.pipeline, order[f.code], f.side or ""))
