"""Terminal view of an audit: every token's id and piece, coloured trained or masked, then a summary."""

from __future__ import annotations

from typing import Optional

from rich.console import Console, Group
from rich.padding import Padding
from rich.text import Text

from harness.audit.codes import ERROR, IGNORE, TokenInfo
from harness.audit.report import Audited, AuditReport

TRAINED = "green"
MASKED = "red"
STOP = "bold underline magenta"
FLAGGED = "reverse"


def _piece(tok, tid: int) -> str:
    return tok.decode([tid]).replace("\n", "\\n").replace("\t", "\\t") or "∅"


def token_line(tok, info: TokenInfo, a: Audited) -> Text:
    """One sequence as ``piece(id)`` runs: green trained, red masked; stop tokens and flagged tokens marked."""
    flagged = {p for h in a.hits for p in h.positions}
    text = Text()
    for pos, (tid, lab) in enumerate(zip(a.seq.ids, a.seq.labels)):
        style = TRAINED if lab != IGNORE else MASKED
        if tid in info.stop_ids:
            style += " " + STOP
        if pos in flagged:
            style += " " + FLAGGED
        text.append(f"{_piece(tok, tid)}", style=style)
        text.append(f"({tid})", style="dim")
        text.append(" ")
    return text


def summary(report: AuditReport) -> Group:
    """One block per finding: a short header row (severity, code, where, count, examples), then the
    message and hint wrapped at the console width under it (readable at 80 columns)."""
    rows: list = [Text(f"audit of {report.tokenizer} — {report.pipeline}, {report.examples} examples", style="bold")]
    for f in report.findings:
        where = f.pipeline + (f"/{f.side}" if f.side else "")
        ex = ", ".join(map(str, f.examples[:8])) + (" …" if len(f.examples) > 8 else "")
        head = Text.assemble((f"{f.severity:<7}", "bold red" if f.severity == ERROR else "yellow"), " ",
                             (f.code, "bold"), f"  {where}  {f.count} of {_total(report, f)} (examples {ex})")
        rows.append(head)
        rows.append(Padding(Text(f.message), (0, 0, 0, 4)))
        rows.append(Padding(Text(f"hint: {f.hint}", style="dim"), (0, 0, 0, 4)))
    return Group(*rows)


def _total(report: AuditReport, f) -> int:
    return sum(1 for a in report.sequences if a.pipeline == f.pipeline and a.seq.side == f.side)


def stats_lines(report: AuditReport) -> list[Text]:
    """Whole-dataset statistics, one line per pipeline (and DPO side)."""
    out = []
    for st in report.stats:
        where = st.pipeline + (f"/{st.side}" if st.side else "")
        line = (f"{where}: {st.sequences} sequences; trained tokens per example min {st.trained_min}, "
                f"median {st.trained_median:g}, max {st.trained_max}; tokens trained {st.tokens_trained} of "
                f"{st.tokens} ({st.trained_share:.1%}); truncated {st.truncated} ({st.truncated_in_reply} inside "
                f"the reply, {st.truncated_in_prompt} in the prompt); dropped {st.dropped}")
        if st.stop_trained is not None:
            line += f"; stop token trained in {st.stop_trained} of {st.sequences - st.dropped}"
        if st.share:
            line += "; with findings: " + ", ".join(f"{c} {v:.0%}" for c, v in st.share.items())
        out.append(Text(line, style="dim"))
    return out


def show(report: AuditReport, tok, info: TokenInfo, n: int = 2, console: Optional[Console] = None) -> None:
    """Print the first ``n`` examples of each pipeline/side as tokens, then the findings and statistics.

    The colour legend is printed only on a terminal (colours mean nothing in a file or a pipe).
    """
    console = console or Console()
    shown: dict[tuple, int] = {}
    for a in report.sequences:
        key = (a.pipeline, a.seq.side)
        if shown.get(key, 0) >= n:
            continue
        shown[key] = shown.get(key, 0) + 1
        side = f" {a.seq.side}" if a.seq.side else ""
        codes = ", ".join(sorted({h.code for h in a.hits})) or "clean"
        console.rule(f"{a.pipeline} example {a.seq.index}{side}: {codes}")
        if a.seq.dropped:
            console.print("[red](dropped by the pipeline: it trains nothing)[/red]")
            continue
        console.print(token_line(tok, info, a))
    if console.is_terminal and any(shown.values()):
        console.print(Text.assemble(("trained", TRAINED), "  ", ("masked", MASKED), "  ",
                                    ("stop token", STOP), "  ", ("flagged", FLAGGED)))
    if report.findings:
        console.print(summary(report))
    else:
        console.print(f"[bold green]clean[/bold green]: no findings for {report.tokenizer} ({report.pipeline})")
    for line in stats_lines(report):
        console.print(line)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]")
