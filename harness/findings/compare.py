"""Findings across runs side by side: rows are claim checks, columns are the runs (plan, base, run id)
plus the study's reference value; each cell holds the measured value and the verdict. A run with several
training seeds shows each check aggregated across them (:func:`harness.findings.verdict.aggregate`): the
mean, the 95% interval of the mean and the verdict across seeds (pass, fail, inconclusive, ...).

``python -m harness findings compare RUN.json RUN.json [...]`` prints the Markdown table and writes
it with its JSON and a PNG heat map (green: holds, red: does not, grey: not measured in that run).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.atomic import atomic_path, write_bytes
from harness.errors import HarnessError
from harness.findings.report import load_json, md_cell
from harness.findings.verdict import ClaimResult, aggregate

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Run:
    """One findings file: its column title and its rows (per check, aggregated across training seeds: the mean
    and the verdict across seeds), with each check's 95% interval when the run had several seeds."""

    title: str
    path: Path
    meta: dict[str, Any]
    rows: dict[Key, ClaimResult]
    intervals: dict[Key, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    runs: tuple[Run, ...]
    keys: tuple[Key, ...]

    def cell(self, run: Run, key: Key) -> ClaimResult | None:
        return run.rows.get(key)

    def reference(self, key: Key) -> float | None:
        return next((r.rows[key].reference_value for r in self.runs if key in r.rows), None)


def _title(meta: dict[str, Any], path: Path) -> str:
    plan, base = meta.get("plan") or path.parent.name, meta.get("base")
    return f"{plan}" + (f" / {base}" if base and base != plan else "") + f" ({meta.get('run') or path.stem})"


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Read the findings files; at least two, each a findings JSON (errors name the file)."""
    if len(paths) < 2:
        raise HarnessError(f"findings compare needs at least two findings files, got {len(paths)}")
    runs, seen = [], {}
    for p in paths:
        meta, results = load_json(Path(p))
        checks = aggregate(results)
        rows: dict[Key, ClaimResult] = {c.key: c.as_row() for c in checks}
        intervals = {c.key: c.interval for c in checks if c.interval is not None}
        title = _title(meta, Path(p))
        seen[title] = seen.get(title, 0) + 1
        if seen[title] > 1:
            title = f"{title} #{seen[title]}"
        runs.append(Run(title, Path(p), meta, rows, intervals))
    return runs


def table(runs: Sequence[Run]) -> Table:
    keys: list[Key] = []
    for run in runs:
        keys += [k for k in run.rows if k not in keys]
    return Table(tuple(runs), tuple(sorted(keys)))


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _cell_text(r: ClaimResult | None, interval: tuple[float, float] | None = None) -> str:
    if r is None:
        return "—"
    spread = f" [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else ""
    return f"{_fmt(r.measured)}{spread} {r.verdict.upper()}"


def markdown(t: Table) -> str:
    head = ["claim", "pair", "check", "threshold", *[r.title for r in t.runs], "reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in t.keys:
        any_row = next(r.rows[key] for r in t.runs if key in r.rows)
        cells = [_cell_text(t.cell(r, key), r.intervals.get(key)) for r in t.runs]
        lines.append("| " + " | ".join([*key[:2], md_cell(key[2]), f"{any_row.comparator} {_fmt(any_row.threshold)}", *cells,
                                        _fmt(t.reference(key))]) + " |")
    runs = [f"- {r.title}: `{r.path}`" + (f", base `{r.meta.get('base_model')}`" if r.meta.get("base_model") else "")
            for r in t.runs]
    return "\n".join(["# Findings compared", "", *runs, "", *lines, ""])


def to_json(t: Table) -> dict[str, Any]:
    return {"runs": [{"title": r.title, "path": str(r.path), "plan": r.meta.get("plan"), "base": r.meta.get("base"),
                      "run": r.meta.get("run"), "versions": r.meta.get("versions", {})} for r in t.runs],
            "rows": [{"claim": k[0], "pair": k[1], "check": k[2], "reference_value": t.reference(k),
                      "cells": [None if (c := t.cell(r, k)) is None else
                                {"measured": c.to_dict()["measured"], "verdict": c.verdict,
                                 "interval": list(r.intervals[k]) if k in r.intervals else None} for r in t.runs]}
                     for k in t.keys]}


def heatmap(t: Table, path: Path) -> Path:
    """A PNG: one row per check, one column per run; colour = verdict, text = measured value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    code = {"pass": 2, "fail": 0}
    grid = [[code.get(c.verdict, 1) if (c := t.cell(r, k)) is not None else 1 for r in t.runs] + [3] for k in t.keys]
    fig, ax = plt.subplots(figsize=(4.5 + 1.6 * (len(t.runs) + 1), 1.0 + 0.32 * len(t.keys)))
    ax.imshow(grid, cmap=ListedColormap(["#e57373", "#d0d0d0", "#81c784", "#ffffff"]), vmin=0, vmax=3, aspect="auto")
    for i, k in enumerate(t.keys):
        for j, r in enumerate(t.runs):
            c = t.cell(r, k)
            ax.text(j, i, "—" if c is None else _fmt(c.measured), ha="center", va="center", fontsize=7)
        ax.text(len(t.runs), i, _fmt(t.reference(k)), ha="center", va="center", fontsize=7, color="#555555")
    ax.set_xticks(range(len(t.runs) + 1), [r.title for r in t.runs] + ["reference value"], fontsize=7, rotation=20,
                  ha="right")
    ax.set_yticks(range(len(t.keys)), [f"{k[0]} {k[2]} [{k[1]}]" for k in t.keys], fontsize=6)
    ax.set_title("Claim checks across runs\ngreen: holds, red: does not, grey: inconclusive, informational or not "
                 "measured", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return Path(path)


def write(t: Table, prefix: Path) -> list[Path]:
    """``PREFIX.md``, ``PREFIX.json`` and ``PREFIX.png``, each written atomically."""
    prefix = Path(prefix)
    md = write_bytes(prefix.with_name(prefix.name + ".md"), markdown(t))
    js = write_bytes(prefix.with_name(prefix.name + ".json"), json.dumps(to_json(t), indent=2, ensure_ascii=False))
    return [md, js, heatmap(t, prefix.with_name(prefix.name + ".png"))]
