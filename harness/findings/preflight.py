"""The pre-flight and post-flight verdicts of each trained node the claims ran on, for the findings report.

``fixtures build`` pre-flights every node before it trains (:mod:`harness.train.preflight`) and
post-flights its saved folder after (:mod:`harness.train.postflight`), keeping both results in the
node's ``meta.json`` (``preflight``, ``postflight``); :func:`from_meta` reads them into a
:class:`NodePreflight`, which the findings JSON, Markdown and terminal summary show. A node cached
before the post-flight existed is post-flighted when the findings are written (the caller passes it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

#: Statuses a node's pre-flight can have (the first four are :class:`harness.train.preflight.PreflightResult`'s
#: besides "error", which stops the build; "skipped": built with --no-preflight; "not-recorded": built
#: before the pre-flight existed).
STATUSES = ("clean", "warning", "allowed", "at-build", "skipped", "not-recorded")

#: Statuses of a node's post-flight (:class:`harness.train.postflight.PostflightResult`'s, and
#: "not-recorded": no record and none could be made).
POST_STATUSES = ("clean", "warning", "allowed", "error", "not-recorded")


@dataclass(frozen=True)
class NodePreflight:
    """One trained node's pre-flight: ``status``, the finding codes it reported, and why it was skipped or
    which errors the plan allowed (``reason``). ``seed`` (several training seeds) and ``variant`` (a
    negative control's plan variant) say which graph the node belongs to. ``post_status`` and
    ``post_findings`` (each ``code: file: message``) are its post-flight's; ``post_reason`` the codes the plan
    allowed, ``post_lazy`` True when it was checked as the findings were written (a node cached before)."""

    node: str
    status: str
    pipeline: str = ""
    codes: tuple[str, ...] = ()
    reason: str = ""
    seed: int | None = None
    variant: str | None = None
    post_status: str = "not-recorded"
    post_findings: tuple[str, ...] = ()
    post_reason: str = ""
    post_lazy: bool = False

    @property
    def post_failed(self) -> bool:
        """The saved checkpoint would stop wrongly when served (a post-flight error the plan did not allow)."""
        return self.post_status == "error"

    @property
    def post_verdict(self) -> str:
        """``ok``, ``FAIL: code: file: message; ...``, ``warnings: ...``, ``allowed: code (reason)`` or
        ``not recorded``; `` (checked now)`` when it ran as the findings were written."""
        lazy = " (checked now)" if self.post_lazy else ""
        if self.post_status == "clean":
            return "ok" + lazy
        if self.post_status == "error":
            return "FAIL: " + "; ".join(self.post_findings) + lazy
        if self.post_status == "warning":
            return "warnings: " + "; ".join(self.post_findings) + lazy
        if self.post_status == "allowed":
            return f"allowed: {self.post_reason}" + lazy
        return "not recorded"

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

    @property
    def post_short(self) -> str:
        """:attr:`post_verdict` with a failure's codes only (the terminal table; the messages follow it)."""
        if not self.post_failed:
            return self.post_verdict
        codes = dict.fromkeys(f.split(":", 1)[0] for f in self.post_findings)
        return "FAIL: " + ", ".join(codes) + (" (checked now)" if self.post_lazy else "")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("post_")}
        post = {"status": self.post_status, "verdict": self.post_verdict, "findings": list(self.post_findings),
                "reason": self.post_reason, "checked_now": self.post_lazy}
        return {**d, "codes": list(self.codes), "verdict": self.verdict, "postflight": post}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NodePreflight":
        post = d.get("postflight") or {}
        return cls(d["node"], d["status"], d.get("pipeline", ""), tuple(d.get("codes", ())), d.get("reason", ""),
                   d.get("seed"), d.get("variant"), post.get("status", "not-recorded"),
                   tuple(post.get("findings", ())), post.get("reason", ""), bool(post.get("checked_now", False)))


def from_meta(node: str, meta: Mapping[str, Any], seed: int | None = None, variant: str | None = None,
              postflight: Mapping[str, Any] | None = None) -> NodePreflight:
    """A node's pre-flight and post-flight from its ``meta.json`` (``meta["preflight"]``, ``meta["postflight"]``);
    ``postflight`` is the one checked now, for a node whose meta has none."""
    pf = meta.get("preflight")
    post = meta.get("postflight")
    lazy = not isinstance(post, Mapping) and isinstance(postflight, Mapping)
    post_fields = _post(post if isinstance(post, Mapping) else postflight, lazy)
    if not isinstance(pf, Mapping):
        return NodePreflight(node, "not-recorded", seed=seed, variant=variant, **post_fields)
    status = str(pf.get("status", "not-recorded"))
    allowed = pf.get("allowed") or {}
    codes = tuple(dict.fromkeys(str(f["code"]) for f in pf.get("findings", ()) if f.get("code") not in allowed))
    reason = "; ".join(f"{c} ({r})" for c, r in allowed.items()) if allowed else str(pf.get("reason", ""))
    return NodePreflight(node, status, str(pf.get("pipeline", "")), codes, reason, seed, variant, **post_fields)


def _post(post: Mapping[str, Any] | None, lazy: bool) -> dict[str, Any]:
    """NodePreflight's post-flight fields from a :class:`harness.train.postflight.PostflightResult` dict: the
    errors first when it failed (the findings the plan allowed left out), else every finding."""
    if not isinstance(post, Mapping):
        return {}
    allowed = post.get("allowed") or {}
    status = str(post.get("status", "not-recorded"))
    found = [f for f in post.get("findings", ()) if f.get("code") not in allowed]
    if status == "error":
        found = [f for f in found if f.get("severity") == "error"]
    return {"post_status": status, "post_findings": tuple(f"{f['code']}: {f['message']}" for f in found),
            "post_reason": "; ".join(f"{c} ({r})" for c, r in allowed.items()), "post_lazy": lazy}


def table(items: Sequence[NodePreflight]) -> str:
    """A fixed-width text table: node (and its graph), pipeline, pre-flight verdict, post-flight verdict."""
    body = [(p.where, p.pipeline or "-", p.verdict, p.post_short) for p in items]
    cols = ("node", "pipeline", "pre-flight", "post-flight")
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(cols)] + [line(r) for r in body])


def markdown(items: Iterable[NodePreflight]) -> str:
    out = ["| node | pipeline | pre-flight | post-flight (saved folder) |", "|---|---|---|---|"]
    out += [f"| {p.where} | {p.pipeline or '-'} | {p.verdict} | {_cell(p.post_verdict)} |" for p in items]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
