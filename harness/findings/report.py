"""Findings output: the terminal table, JSON/Markdown files (written atomically) and PNGs.

The tables show one row per check aggregated across training seeds (:func:`harness.findings.verdict.aggregate`:
measured is the mean, with its 95% interval and n when there are several seeds) and a summary line counting
the verdicts (:func:`harness.findings.verdict.summary_line`). The JSON keeps ``results`` (one row per seed, as
older readers expect) and adds ``checks`` (the aggregates with their verdicts), ``counts`` (checks per verdict,
negative controls left out) and ``control_counts`` (the negative controls' checks per verdict)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from harness.atomic import atomic_path, write_bytes
from harness.findings import preflight as _preflight
from harness.findings.preflight import NodePreflight
from harness.findings.statistics import layer_values, resolve
from harness.findings.verdict import NOT_MEASURED, Aggregate, ClaimResult, aggregate, counts, summary_line

if TYPE_CHECKING:
    from harness.findings.diffs import DiffSource

COLUMNS = ("claim", "pair", "check", "measured", "base", "reference", "threshold", "margin", "verdict")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.4g}"


def rows(results: Iterable[ClaimResult]) -> list[tuple[str, ...]]:
    out = []
    for r in results:
        pair = r.pair if r.seed is None else f"{r.pair} [seed {r.seed}]"
        out.append((r.claim, pair, r.check, _fmt(r.measured), _fmt(r.base_value), _fmt(r.reference_value),
                    f"{r.comparator} {_fmt(r.threshold)}", _fmt(r.margin), r.verdict.upper() + _tag(r)))
    return out


def _tag(r: ClaimResult) -> str:
    if r.note.startswith("negative control"):
        return " (control: must fail)"
    return " (known)" if r.note.startswith("known") and r.verdict != "pass" else ""


def measured_cell(c: Aggregate) -> str:
    """The mean, with its 95% interval and n when several seeds measured the check ("-": not measured)."""
    if c.verdict == NOT_MEASURED:
        return "-"
    if c.interval is None:
        return _fmt(c.as_row().measured)
    lo, hi = c.interval
    return f"{_fmt(c.mean)} [{_fmt(lo)}, {_fmt(hi)}] n={c.n}"


def check_rows(checks: Sequence[Aggregate]) -> list[tuple[str, ...]]:
    """:func:`rows` of the checks aggregated across seeds, the measured cell with the interval and n."""
    at, margin = COLUMNS.index("measured"), COLUMNS.index("margin")

    def cell(c: Aggregate, i: int, text: str) -> str:
        if i == at:
            return measured_cell(c)
        return "-" if i == margin and c.verdict == NOT_MEASURED else text

    return [tuple(cell(c, i, text) for i, text in enumerate(r))
            for c, r in zip(checks, rows([c.as_row() for c in checks]))]


def not_measured(checks: Sequence[Aggregate]) -> list[str]:
    """``claim check [pair]: reason`` for each check no seed could measure."""
    return [f"{c.key[0]} {c.key[2]} [{c.key[1]}]: {c.note or 'no reason given'}" for c in checks
            if c.verdict == NOT_MEASURED]


def table(results: Sequence[ClaimResult]) -> str:
    """A fixed-width text table of the results, one line per check (aggregated across training seeds)."""
    body = check_rows(aggregate(results))
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in body])


def md_cell(text: str) -> str:
    """A Markdown table cell: a ``|`` in the text (``P(stop | reply)``) escaped, so it splits no column."""
    return text.replace("|", "\\|")


def markdown_table(results: Sequence[ClaimResult]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in check_rows(aggregate(results))]
    return "\n".join(out)


def spread_table(items: Sequence[Aggregate]) -> str:
    """Each check across training seeds: n, mean, 95% interval, min, max, stdev, per-seed values and verdicts."""
    cols = ("claim", "pair", "check", "n", "mean", "95% interval", "min", "max", "stdev", "per seed", "verdict")

    def interval(c: Aggregate) -> str:
        return "-" if c.interval is None else f"[{_fmt(c.interval[0])}, {_fmt(c.interval[1])}]"

    body = [(c.key[0], c.key[1], c.key[2], str(c.n), _fmt(c.mean), interval(c),
             _fmt(min(c.values)) if c.values else "-", _fmt(max(c.values)) if c.values else "-", _fmt(c.stdev),
             ", ".join(f"{'-' if r.seed is None else r.seed}: {_fmt(r.measured) if r.measured_here else 'not measured'}"
                       for r in c.rows),
             c.verdict + ("" if c.agree else " (seeds disagree: " + ",".join(c.verdicts) + ")")) for c in items]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(cols)] + [line(r) for r in body])


atomic_write = write_bytes  # the name this module's callers use


def to_json(results: Sequence[ClaimResult], meta: Mapping[str, Any],
            preflight: Sequence[NodePreflight] = ()) -> dict[str, Any]:
    checks = aggregate(results)
    return {"meta": dict(meta), "preflight": [p.to_dict() for p in preflight], "results": [r.to_dict() for r in results],
            "checks": [c.to_dict() for c in checks], "counts": counts(c for c in checks if not c.control),
            "control_counts": counts(c for c in checks if c.control),
            "spread": [{"claim": c.key[0], "pair": c.key[1], "check": c.key[2], "values": list(c.values),
                        "stdev": c.stdev, "agree": c.agree} for c in checks if len(c.rows) > 1]}


def load_json(path: Path) -> tuple[dict[str, Any], list[ClaimResult]]:
    """Read a findings JSON written by :func:`write`; errors name the file."""
    from harness.errors import LoadError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data.get("meta", {}), [ClaimResult.from_dict(r) for r in data["results"]]
    except FileNotFoundError:
        raise LoadError(f"{path}: findings file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LoadError(f"{path}: not a findings JSON ({exc})") from None


def to_markdown(results: Sequence[ClaimResult], meta: Mapping[str, Any], images: Sequence[str] = (),
                preflight: Sequence[NodePreflight] = ()) -> str:
    lines = [f"# Findings: plan `{meta.get('plan', '?')}`, run {meta.get('run', '?')}", ""]
    for k in ("variant", "base", "base_model", "base_identity", "plan_path", "claims_dir", "device", "seeds",
              "baseline"):
        if meta.get(k) not in (None, "", []):
            lines.append(f"- {k}: `{meta[k]}`")
    if meta.get("versions"):
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    checks = aggregate(results)
    lines += ["", markdown_table(results), "", summary_line(checks), ""]
    unmeasured = not_measured(checks)
    if unmeasured:
        lines += ["Not measured:", ""] + [f"- {x}" for x in unmeasured] + [""]
    notes = sorted({f"- {r.claim}: {r.note}" for r in results if r.note and r.measured_here})
    if notes:
        lines += ["Notes:", ""] + notes + [""]
    spread = [c for c in checks if len(c.rows) > 1]
    if spread:
        lines += ["## Spread across training seeds", "", "```", spread_table(spread), "```", ""]
    if preflight:
        lines += ["## Pre-flight per trained node (and the post-flight of its saved folder)", "", _preflight.markdown(preflight), ""]
    if meta.get("timing"):
        from harness.findings.timing import markdown as timing_markdown

        lines += ["## Timing", "", timing_markdown(meta["timing"]), ""]
    for img in images:
        lines += [f"![{Path(img).stem}]({Path(img).name})", ""]
    return "\n".join(lines)


def write(folder: Path, run: str, results: Sequence[ClaimResult], meta: Mapping[str, Any],
          images: Sequence[str] = (), preflight: Sequence[NodePreflight] = ()) -> tuple[Path, Path]:
    """Write ``<folder>/<run>.json`` and ``.md`` atomically (with each trained node's pre-flight);
    returns both paths."""
    folder = Path(folder)
    js, md = folder / f"{run}.json", folder / f"{run}.md"
    atomic_write(js, json.dumps(to_json(results, meta, preflight), indent=2, ensure_ascii=False))
    atomic_write(md, to_markdown(results, meta, images, preflight))
    return js, md


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_layer_deviation(diffs: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Per-layer L2 minus the mean layer L2, one line per diff (seed tables 14 and 15)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, report in diffs.items():
        vals = layer_values(report, "l2")
        mean = sum(v for _, v in vals) / len(vals)
        ax.plot([i for i, _ in vals], [v - mean for _, v in vals], marker="o", ms=3,
                label=f"{name} (mean {mean:.3g})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("L2 − mean layer L2")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, Path(path))
    return Path(path)


def plot_conflict_rates(diffs: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> Path:
    """Sign-conflict rate per layer, one line per task-vector pair (log scale when positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    positive = True
    for name, report in diffs.items():
        vals = layer_values(report, "conflict_rate")
        positive &= all(v > 0 for _, v in vals)
        ax.plot([i for i, _ in vals], [v for _, v in vals], marker="o", ms=3, label=name)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("conflict rate")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, Path(path))
    return Path(path)


#: the statistic whose checks name the task-vector pairs the conflict-rate plot draws
CONFLICT_STATISTIC = "conflict_ratio"


def conflict_pairs(specs: Iterable[Any], source: Any) -> list[tuple[str, str, str]]:
    """``(a, b, ref)`` node triples, in spec order, that the specs' ``conflict_ratio`` checks compare (their
    ``num`` and ``den`` references resolved for each pair): the task vectors a−ref and b−ref."""
    out: list[tuple[str, str, str]] = []
    for spec in specs:
        for check in spec.checks:
            if check.statistic != CONFLICT_STATISTIC:
                continue
            params = check.kwargs()
            for pair in spec.pairs:
                for refs in (params.get("den"), params.get("num")):
                    if not refs or len(refs) != 3:
                        continue
                    try:
                        triple = tuple(resolve(source, pair, r) for r in refs)
                    except Exception:  # noqa: BLE001 - a node the graph lacks is simply not plotted
                        continue
                    if triple not in out:
                        out.append(triple)  # type: ignore[arg-type]
    return out


#: the methods whose nodes the layer-deviation plots draw (one plot each)
PLOTTED_METHODS = ("sft", "dpo")


def plot_diffs(plan: Any, conflicts: Sequence[tuple[str, str, str]],
               built: Callable[[str], bool]) -> list[tuple[str, str, str | None]]:
    """The diffs :func:`plot_graph` reads, ``(a, b, ref)``: each SFT and DPO node that is ``built`` against the
    node it was trained from, then each of ``conflicts`` whose two nodes are built trained nodes and whose
    reference is a node of the plan."""
    trained = [n for n in plan.names if plan.node(n).method != "base" and built(n)]
    out: list[tuple[str, str, str | None]] = [(plan.node(n).parent, n, None) for n in trained
                                              if plan.node(n).method in PLOTTED_METHODS]
    return out + [(a, b, ref) for a, b, ref in conflicts if a in trained and b in trained and ref in plan.names]


def plot_graph(source: DiffSource, plan: Any, folder: Path, run: str,
               conflicts: Sequence[tuple[str, str, str]] = ()) -> list[Path]:
    """Per-layer L2 deviation for every SFT and DPO node (against its start), and the conflict rates per layer
    of the task-vector pairs ``conflicts`` names (:func:`conflict_pairs`), where the graph has both nodes
    (the diffs of :func:`plot_diffs`)."""
    # a partial run (-k) built only some
    diffs = plot_diffs(plan, conflicts, lambda n: (source.nodes.path(n) / "config.json").is_file())
    sft = {b: source.diff(a, b) for a, b, ref in diffs if ref is None and plan.node(b).method == "sft"}
    dpo = {b: source.diff(a, b) for a, b, ref in diffs if ref is None and plan.node(b).method == "dpo"}
    imgs = [plot_layer_deviation(sft, folder / f"{run}-sft-layer-deviation.png",
                                 "SFT nodes: layer L2 − mean (vs the node trained from; seed table 14)"),
            plot_layer_deviation(dpo, folder / f"{run}-dpo-layer-deviation.png",
                                 "DPO nodes: layer L2 − mean (vs the node trained from; seed table 15)")]
    rates = {f"{a} vs {b} (ref {ref})": source.diff(a, b, ref) for a, b, ref in diffs if ref is not None}
    if rates:
        imgs.append(plot_conflict_rates(rates, folder / f"{run}-conflict-rates.png", "Sign-conflict rate per layer"))
    return imgs
