"""Label snapshots: a compact fingerprint of what each example trains, to compare across library upgrades.

A snapshot file holds, per run (tokenizer × pipeline × format), every sequence's input ids and
its trained positions (as ``[start, end)`` ranges), with the versions of trl, transformers,
tokenizers and torch that produced them. :func:`compare` lists the sequences whose ids or
trained positions changed, with the first differing position shown as tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from harness import versions
from harness.atomic import write_bytes
from harness.audit.codes import IGNORE
from harness.audit.report import AuditReport
from harness.errors import LoadError

SCHEMA = 1
LIBRARIES = ("trl", "transformers", "tokenizers", "torch", "jinja2")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the labels."""
    return versions.library_versions(LIBRARIES)


def _ranges(labels: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i, lab in enumerate(labels):
        if lab == IGNORE:
            continue
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _trained(ranges: list[list[int]], n: int) -> list[bool]:
    flags = [False] * n
    for a, b in ranges:
        for i in range(a, min(b, n)):
            flags[i] = True
    return flags


def run_key(name: str, pipeline: str, fmt: str) -> str:
    """``tokenizer|pipeline|format``; a tokenizer path counts by its last part (snapshots move between machines)."""
    return f"{Path(name).name or name}|{pipeline}|{fmt}"


def snapshot(report: AuditReport, fmt: str, name: Optional[str] = None) -> dict[str, Any]:
    """The snapshot document of one audit (``name``: the tokenizer's name in the run keys)."""
    runs: dict[str, dict] = {}
    for a in report.sequences:
        seq = a.seq
        key = run_key(name or report.tokenizer, a.pipeline, fmt if a.pipeline != "trl-dpo" else "preference")
        example = f"{seq.index}" + (f"/{seq.side}" if seq.side else "")
        runs.setdefault(key, {})[example] = {"ids": list(seq.ids), "trained": _ranges(list(seq.labels))}
    return {"schema": SCHEMA, "versions": library_versions(), "runs": runs}


def write_snapshot(report: AuditReport, fmt: str, path: Union[str, Path], name: Optional[str] = None) -> Path:
    """Write the snapshot of ``report`` to ``path`` (runs already in the file for other keys are kept)."""
    p = Path(path)
    doc = snapshot(report, fmt, name)
    if p.is_file():
        old = read_snapshot(p)
        doc["runs"] = {**{k: v for k, v in old["runs"].items() if k not in doc["runs"]}, **doc["runs"]}
    write_bytes(p, json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    return p


def read_snapshot(path: Union[str, Path]) -> dict[str, Any]:
    """A snapshot file; a missing or malformed one raises LoadError naming it."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"snapshot {str(p)!r} does not exist")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"snapshot {str(p)!r} is unreadable ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("runs"), dict):
        raise LoadError(f"snapshot {str(p)!r}: not a label snapshot of schema {SCHEMA}")
    return doc


@dataclass(frozen=True)
class Change:
    """One sequence whose ids or trained positions differ from the snapshot."""

    run: str
    example: str
    position: int
    before: str  # tokens around the first difference, as the snapshot had them ('*' marks trained)
    after: str

    def line(self) -> str:
        return f"{self.run} example {self.example}: first difference at token {self.position}: " \
               f"{self.before} → {self.after}"


@dataclass(frozen=True)
class SnapshotDiff:
    """The result of :func:`compare`: the changed sequences and both sets of library versions."""

    before_versions: dict
    after_versions: dict
    changes: list[Change]
    compared: int
    missing_runs: list[str]

    def versions_line(self) -> str:
        diff = [f"{k} {self.before_versions.get(k, '?')} → {self.after_versions.get(k, '?')}"
                for k in LIBRARIES if self.before_versions.get(k) != self.after_versions.get(k)]
        return "snapshot vs now: " + ("; ".join(diff) if diff else "same library versions")


def _window(tok, ids: list[int], flags: list[bool], at: int) -> str:
    parts = []
    for i in range(max(0, at - 2), min(len(ids), at + 3)):
        piece = tok.decode([ids[i]]).replace("\n", "\\n")
        parts.append(f"{'*' if flags[i] else ''}{piece}({ids[i]})")
    return " ".join(parts) if parts else "(nothing)"


def compare(report: AuditReport, fmt: str, path: Union[str, Path], name: Optional[str] = None) -> SnapshotDiff:
    """The sequences of ``report`` whose ids or trained positions differ from the snapshot at ``path``."""
    old = read_snapshot(path)
    new = snapshot(report, fmt, name)
    changes: list[Change] = []
    compared = 0
    missing = [k for k in new["runs"] if k not in old["runs"]]
    for key, seqs in new["runs"].items():
        before = old["runs"].get(key)
        if before is None:
            continue
        for name in sorted(set(seqs) | set(before), key=lambda s: (int(s.split("/")[0]), s)):
            compared += 1
            a, b = before.get(name), seqs.get(name)
            if a is None or b is None:
                changes.append(Change(key, name, 0, "(absent)" if a is None else "(present)",
                                      "(absent)" if b is None else "(present)"))
                continue
            fa, fb = _trained(a["trained"], len(a["ids"])), _trained(b["trained"], len(b["ids"]))
            if a["ids"] == b["ids"] and fa == fb:
                continue
            n = max(len(a["ids"]), len(b["ids"]))
            at = next((i for i in range(n) if i >= len(a["ids"]) or i >= len(b["ids"])
                       or a["ids"][i] != b["ids"][i] or fa[i] != fb[i]), n)
            changes.append(Change(key, name, at, _window(report.tok, a["ids"], fa, at),
                                  _window(report.tok, b["ids"], fb, at)))
    return SnapshotDiff(old.get("versions", {}), new["versions"], changes, compared, missing)
