"""The pre-flight verdict of each trained node the claims ran on, for the findings report.

``fixtures build`` pre-flights every node before it trains (:mod:`harness.train.preflight`) and keeps
the result in the node's ``meta.json`` under ``preflight``; :func:`from_meta` reads that into a
:class:`NodePreflight`, which the findings JSON, Markdown and terminal summary show.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

#: Statuses a node's pre-flight can have (the first four are :class:`harness.train.preflight.PreflightResult`'s
#: besides "error", which stops the build; "skipped": built with --no-preflight; "not-recorded": built
#: before the pre-flight existed).
STATUSES = ("clean", "warning", "allowed", "at-build", "skipped", "not-recorded")


@dataclass(frozen=True)
class NodePreflight:
    """One trained node's pre-flight: ``status``, the finding codes it reported, and why it was skipped or
    which errors the plan allowed (``reason``). ``seed`` (several training seeds) and ``variant`` (a
    negative control's plan variant) say which graph the node belongs to."""

    node: str
    status: str
    pipeline: str = ""
    codes: tuple[str, ...] = ()
    reason: str = ""
    seed: int | None = None
    variant: str | None = None

    @property
    def verdict(self) -> str:
        """``ok``, ``warnings: CODE, ...``, ``allowed: CODE (reason)``, ``skipped (--no-preflight)`` or
        ``not recorded``."""
        if self.status == "clean":
            return "ok"
        if self.status == "warning":
            return "warnings: " + ", ".join(self.codes)
        if self.status == "allowed":
            return f"allowed: {self.reason}" + (f"; warnings: {', '.join(self.codes)}" if self.codes else "")
        if self.status == "skipped":
            return f"skipped ({self.reason or '--no-preflight'})"
        if self.status == "not-recorded":
            return "not recorded (the node was built before the pre-flight existed)"
        return self.status + (f" ({self.reason})" if self.reason else "")

    @property
    def where(self) -> str:
        """The node with its graph: ``sft_d0``, ``sft_d0 [seed 1]``, ``dpo_d0 [c1_dpo_at_sft_lr]``."""
        tags = ([f"seed {self.seed}"] if self.seed is not None else []) + ([self.variant] if self.variant else [])
        return self.node + (f" [{', '.join(tags)}]" if tags else "")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**d, "codes": list(self.codes), "verdict": self.verdict}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NodePreflight":
        return cls(d["node"], d["status"], d.get("pipeline", ""), tuple(d.get("codes", ())), d.get("reason", ""),
                   d.get("seed"), d.get("variant"))


def from_meta(node: str, meta: Mapping[str, Any], seed: int | None = None,
              variant: str | None = None) -> NodePreflight:
    """A node's pre-flight from its ``meta.json`` (``meta["preflight"]``)."""
    pf = meta.get("preflight")
    if not isinstance(pf, Mapping):
        return NodePreflight(node, "not-recorded", seed=seed, variant=variant)
    status = str(pf.get("status", "not-recorded"))
    allowed = pf.get("allowed") or {}
    codes = tuple(dict.fromkeys(str(f["code"]) for f in pf.get("findings", ()) if f.get("code") not in allowed))
    reason = "; ".join(f"{c} ({r})" for c, r in allowed.items()) if allowed else str(pf.get("reason", ""))
    return NodePreflight(node, status, str(pf.get("pipeline", "")), codes, reason, seed, variant)


def table(items: Sequence[NodePreflight]) -> str:
    """A fixed-width text table: node (and its graph), pipeline, verdict."""
    body = [(p.where, p.pipeline or "-", p.verdict) for p in items]
    cols = ("node", "pipeline", "pre-flight")
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(cols)] + [line(r) for r in body])


def markdown(items: Iterable[NodePreflight]) -> str:
    out = ["| node | pipeline | pre-flight |", "|---|---|---|"]
    out += [f"| {p.where} | {p.pipeline or '-'} | {p.verdict} |" for p in items]
    return "\n".join(out)
