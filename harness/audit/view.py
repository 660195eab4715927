"""Terminal view of an audit: every token's id and piece, coloured trained or masked, then a summary."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.audit.findings import ERROR, IGNORE, TokenInfo
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


def summary_table(report: AuditReport) -> Table:
    """One row per finding: severity, code, pipeline/side, count, example indices, message and hint."""
    table = Table(title=f"audit of {report.tokenizer} — {report.pipeline}, {report.examples} examples",
                  show_lines=True)
    for col in ("severity", "code", "where", "count", "examples"):
        table.add_column(col, no_wrap=col != "examples")
    table.add_column("message / hint", overflow="fold", ratio=1)
    for f in report.findings:
        sev = Text(f.severity, style="bold red" if f.severity == ERROR else "yellow")
        where = f.pipeline + (f"/{f.side}" if f.side else "")
        ex = ", ".join(map(str, f.examples[:8])) + (" …" if len(f.examples) > 8 else "")
        table.add_row(sev, f.code, where, str(f.count), ex, f"{f.message}\n[dim]hint: {f.hint}[/dim]")
    return table


def show(report: AuditReport, tok, info: TokenInfo, n: int = 2, console: Optional[Console] = None) -> None:
    """Print the first ``n`` examples of each pipeline/side as tokens, then the findings table."""
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
    console.print(Text.assemble(("trained", TRAINED), "  ", ("masked", MASKED), "  ",
                                ("stop token", STOP), "  ", ("flagged", FLAGGED)))
    if report.findings:
        console.print(summary_table(report))
    else:
        console.print(f"[bold green]clean[/bold green]: no findings for {report.tokenizer} ({report.pipeline})")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]")
