"""A user's own training data: one JSONL file per node (``dataset = "path/file.jsonl"`` in a plan).

Row formats (detected from the first row's keys, or declared with ``format``):

- ``prompt-completion``: ``{"prompt": str, "completion": str}``
- ``conversational``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` ending on an assistant turn
- ``preference``: ``{"prompt": str | messages, <chosen>: str | messages, <rejected>: str | messages}``;
  the chosen and rejected sources are the fields a DPO node names (default ``chosen``, ``rejected``)

SFT nodes take prompt-completion or conversational rows, DPO nodes preference rows. Every record
is emitted in trl's conversational format (so the base's chat template applies), with the plan's
system prompt prepended unless the row has its own. A bad row raises one
:class:`~harness.errors.LoadError` naming ``file:line: field``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from harness.data import iter_jsonl
from harness.errors import LoadError

FORMATS = ("prompt-completion", "conversational", "preference")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Source:
    """Where a node's own data comes from and how its rows read."""

    path: Path
    format: Optional[str] = None  # None: detected from the first row
    chosen: str = "chosen"
    rejected: str = "rejected"


def detect(row: dict, src: Source) -> str:
    """The format of a row, from its keys."""
    if "messages" in row:
        return "conversational"
    if src.chosen in row or src.rejected in row:
        return "preference"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    raise LoadError(f"keys {sorted(row)} match no format: {', '.join(FORMATS)} "
                    f"(preference rows need {src.chosen!r} and {src.rejected!r})")


def _messages(value: Any, where: str, last: Optional[str] = None) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise LoadError(f"{where}: must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise LoadError(f"{where}[{i}].role: must be one of {', '.join(ROLES)}, got {m!r:.60}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise LoadError(f"{where}[{i}].content: must be a non-empty string")
    if last and value[-1]["role"] != last:
        raise LoadError(f"{where}: the last message must be the {last}'s, got {value[-1]['role']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _turn(value: Any, where: str, role: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise LoadError(f"{where}: is an empty string")
        return [{"role": role, "content": value}]
    return _messages(value, where, last=role)


def _with_system(prompt: list[dict], system: str) -> list[dict]:
    if system and prompt[0]["role"] != "system":
        return [{"role": "system", "content": system}] + prompt
    return prompt


def record(row: Any, fmt: str, method: str, src: Source, where: str, system: str = "") -> dict:
    """One trl record of ``row`` (already parsed) for an ``sft`` or ``dpo`` node."""
    if not isinstance(row, dict):
        raise LoadError(f"{where}: expected a JSON object")
    need = {"prompt-completion": ("prompt", "completion"), "conversational": ("messages",),
            "preference": ("prompt", src.chosen, src.rejected)}[fmt]
    for key in need:
        if key not in row:
            raise LoadError(f"{where}: {key}: missing (format {fmt})")
    if method == "dpo" and fmt != "preference":
        raise LoadError(f"{where}: a DPO node needs preference rows ({src.chosen!r}/{src.rejected!r}), got {fmt}")
    if method == "sft" and fmt == "preference":
        raise LoadError(f"{where}: an SFT node needs prompt-completion or conversational rows, got preference")
    if fmt == "conversational":
        msgs = _messages(row["messages"], f"{where}: messages", last="assistant")
        return {"messages": _with_system(msgs, system)}
    prompt = _with_system(_turn(row["prompt"], f"{where}: prompt", "user"), system)
    if fmt == "prompt-completion":
        return {"messages": prompt + _turn(row["completion"], f"{where}: completion", "assistant")}
    return {"prompt": prompt, "chosen": _turn(row[src.chosen], f"{where}: {src.chosen}", "assistant"),
            "rejected": _turn(row[src.rejected], f"{where}: {src.rejected}", "assistant")}


def load_records(src: Source, method: str, system: Union[str, bool] = "") -> list[dict]:
    """Every row of ``src`` as trl records for an ``sft`` or ``dpo`` node."""
    if src.format is not None and src.format not in FORMATS:
        raise LoadError(f"{src.path}: format {src.format!r} is unknown; known: {', '.join(FORMATS)}")
    sys_text = system if isinstance(system, str) else ""
    out, fmt = [], src.format
    for _, where, row in iter_jsonl(src.path):
        if fmt is None:
            if not isinstance(row, dict):
                raise LoadError(f"{where}: expected a JSON object")
            try:
                fmt = detect(row, src)
            except LoadError as e:
                raise LoadError(f"{where}: {e}") from None
        out.append(record(row, fmt, method, src, where, sys_text))
    if not out:
        raise LoadError(f"{src.path}: no rows")
    return out


def plan_source(dataset: Any, method: str, where: str, base_dir: Optional[Path],
                error: Callable[[str], Exception] = LoadError) -> dict:
    """A plan node's own data: ``"path.jsonl"`` or ``{ path, format, chosen, rejected }`` (a path relative to
    the plan file's folder); ``{}`` for a named dataset (d0, d1, d2). Errors name ``where`` and the field."""
    if isinstance(dataset, str) and dataset.endswith(".jsonl"):
        dataset = {"path": dataset}
    if not isinstance(dataset, dict):
        return {}
    for key, value in dataset.items():
        if key not in ("path", "format", "chosen", "rejected"):
            raise error(f"{where}.{key}: unknown field; known: chosen, format, path, rejected")
        if not isinstance(value, str) or not value:
            raise error(f"{where}.{key}: must be a non-empty string, got {value!r}")
    if "path" not in dataset:
        raise error(f"{where}.path: missing")
    if dataset.get("format", FORMATS[0]) not in FORMATS:
        raise error(f"{where}.format: must be one of {', '.join(FORMATS)}, got {dataset['format']!r}")
    if method == "sft" and ("chosen" in dataset or "rejected" in dataset):
        raise error(f"{where}: chosen/rejected name a DPO node's preference fields; this node is SFT")
    p = Path(dataset["path"]).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.is_file():
        raise error(f"{where}.path: no such data file {str(p)!r}")
    out = {"path": str(p.resolve()), "chosen": dataset.get("chosen", "chosen"),
           "rejected": dataset.get("rejected", "rejected")}
    if "format" in dataset:
        out["format"] = dataset["format"]
    return out
