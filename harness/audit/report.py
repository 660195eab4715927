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
    """Whole-dataset statistics of one pipeline (and DPO side).

    ``tokens`` counts every token the sequences hold (padding left out), ``tokens_trained`` those with a
    label; ``truncated_in_reply`` are sequences max_length cut after their reply began (the reply loses its
    end), ``truncated_in_prompt`` those cut before it (kept only by a pipeline that trains the prompt too,
    hf-clm: trl drops a row whose prompt alone fills max_length, so it counts under ``dropped``);
    ``stop_trained`` the sequences whose stop token (the first after the reply starts) is trained (None:
    the audit's stop tokens were not given)."""

    pipeline: str
    side: Optional[str]
    sequences: int
    trained_min: int  # trained tokens per example
    trained_median: float
    trained_max: int
    truncated: int  # sequences cut by max_length
    dropped: int  # examples the pipeline dropped
    share: dict  # finding code -> share of sequences that have it
    tokens: int = 0
    tokens_trained: int = 0
    truncated_in_reply: int = 0
    truncated_in_prompt: int = 0
    stop_trained: Optional[int] = None

    @property
    def trained_share(self) -> float:
        """Trained tokens over every (non-pad) token of the sequences; 0 when there are none."""
        return self.tokens_trained / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("pipeline", "sequences", "trained_min", "trained_median", "trained_max",
                                           "truncated", "dropped", "share", "tokens", "tokens_trained",
                                           "truncated_in_reply", "truncated_in_prompt", "stop_trained")}
        d["trained_share"] = round(self.trained_share, 4)
        if self.side:
            d["side"] = self.side
        return d


def cut_in_reply(seq: Trained) -> Optional[bool]:
    """For a truncated sequence: True when max_length cut it after its reply began, False when before (None:
    not truncated). The reply begins where the sequence leaves the prompt tokenized alone (``prompt_len``),
    else, with no reference prompt, at the first trained token of the untruncated sequence."""
    if seq.full is None:
        return None
    n = len(seq.ids)
    if seq.prompt_len is not None:
        return seq.prompt_len < n
    first = next((i for i, lab in enumerate(seq.full[1]) if lab != IGNORE), None)
    return first is not None and first < n


def stop_is_trained(seq: Trained, info: Any) -> bool:
    """The first stop token after the reply starts (``info.stop_ids``; a BOS that is also the EOS opening
    the sequence stops nothing) is there and has a label."""
    ids, labels = seq.ids, seq.labels
    first = 1 if info.bos_id is not None and info.bos_id == info.eos_id and ids and ids[0] == info.bos_id else 0
    k = next((i for i in range(max(seq.prompt_len or 0, first), len(ids)) if ids[i] in info.stop_ids), None)
    return k is not None and labels[k] != IGNORE


def run_stats(audited: list[Audited], info: Any = None) -> list[RunStats]:
    """Statistics per (pipeline, side) over every audited sequence; ``info`` (the tokenizer's
    :class:`~harness.audit.codes.TokenInfo`) gives the stop tokens for ``stop_trained``."""
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
        cuts = [cut_in_reply(a.seq) for a in items]
        out.append(RunStats(pipe, side, n, min(counts), float(statistics.median(counts)), max(counts),
                            sum(1 for a in items if a.seq.full is not None),
                            sum(1 for a in items if a.seq.dropped),
                            {c: round(k / n, 4) for c, k in sorted(codes.items())},
                            tokens=sum(len(a.seq.ids) for a in items), tokens_trained=sum(counts),
                            truncated_in_reply=cuts.count(True), truncated_in_prompt=cuts.count(False),
                            stop_trained=None if info is None else
                            sum(1 for a in items if not a.seq.dropped and stop_is_trained(a.seq, info))))
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
        return run_stats(self.sequences, self.info)

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
