"""Plan files that build on others: ``extends = "other.toml"`` resolved into one plan table.

A plan (or a shared part such as ``fixtures/plans/parts/graph.toml``) may start from another file
and state only what differs. The rules, applied before the plan is validated:

- ``extends`` is a path relative to the file that says it (absolute and ``~`` paths work too). The
  file it names is resolved first (it may extend another), then this file is laid over it.
- Tables merge key by key, at every depth: ``[base]``, ``[sft]``, ``[variants.NAME]`` and inline
  tables such as ``dpo = { ... }`` inside a variant. Every other value replaces the inherited one as a
  whole: strings, numbers, booleans and arrays, among them the ``[[nodes]]`` list, ``only`` and
  ``stop_tokens``. A file that lists ``[[nodes]]`` states its whole graph.
- Variants belong to a graph: a file that lists its own ``[[nodes]]`` inherits no variants (theirs
  name nodes this graph may not have); one that keeps the inherited nodes inherits the variants too.
- ``name`` is never inherited: a plan is named by its own ``name`` or its file's stem (findings
  folders are named by plan).
- Paths in an inherited file (``base.model``/``offline``/``chat_template`` starting with ``.``, a
  node's own ``.jsonl`` data) are taken relative to the file that writes them.
- A missing file, an ``extends`` that is not a string, or a cycle (``a extends b extends a``) is one
  :class:`~harness.train.recipe.PlanError` naming the file and its ``extends`` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from harness.tomlfile import load_toml
from harness.train.recipe import PlanError

__all__ = ["EXTENDS", "merge_tables", "resolve_extends"]

EXTENDS = "extends"
#: ``[base]`` keys whose value is a path when it starts with ``.`` (as :func:`harness.train.plan._plan_path` reads it).
_BASE_PATHS = ("model", "offline", "chat_template")


def resolve_extends(raw: Mapping[str, Any], path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The plan table ``raw`` (read from ``path``) with its ``extends`` chain applied and ``extends`` removed."""
    raw = dict(raw)
    if EXTENDS not in raw:
        return raw
    target = raw.pop(EXTENDS)
    where = f"{path}: {EXTENDS}"
    if not isinstance(target, str) or not target.strip():
        raise PlanError(f"{where}: must be the path of another plan file, got {target!r}")
    parent_path = (path.parent / Path(target).expanduser()).resolve()
    seen = chain + (path.resolve(),)
    if parent_path in seen:
        loop = " -> ".join(str(p) for p in seen[seen.index(parent_path):] + (parent_path,))
        raise PlanError(f"{where}: {target!r} closes a cycle: {loop}")
    if not parent_path.is_file():
        raise PlanError(f"{where}: no such plan file {str(parent_path)!r}")
    parent = resolve_extends(load_toml(parent_path, "plan file", PlanError), parent_path, seen)
    parent = _anchor_paths(parent, parent_path.parent)
    parent.pop("name", None)
    if "nodes" in raw:
        parent.pop("variants", None)
    return merge_tables(parent, raw)


def merge_tables(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``under``: tables merge key by key at every depth, any other value replaces."""
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _anchor_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``raw`` with its relative paths made absolute from ``folder`` (the folder of the file that wrote them)."""
    base = raw.get("base")
    if isinstance(base, dict):
        base = dict(base)
        for key in _BASE_PATHS:
            value = base.get(key)
            if isinstance(value, str) and value.startswith("."):
                base[key] = str((folder / value).resolve())
        raw["base"] = base
    nodes = raw.get("nodes")
    if isinstance(nodes, list):
        raw["nodes"] = [_anchor_node(n, folder) for n in nodes]
    return raw


def _anchor_node(node: Any, folder: Path) -> Any:
    if not isinstance(node, dict):
        return node
    data = node.get("dataset")
    if isinstance(data, str) and data.endswith(".jsonl"):
        data = _absolute(data, folder)
    elif isinstance(data, dict) and isinstance(data.get("path"), str):
        data = {**data, "path": _absolute(data["path"], folder)}
    else:
        return node
    return {**node, "dataset": data}


def _absolute(value: str, folder: Path) -> str:
    p = Path(value).expanduser()
    return value if p.is_absolute() else str(folder / p)
