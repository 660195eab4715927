"""Weight diffs for the claims: computed once through ``harness.diff.compare`` and cached on disk.

The cache file name hashes the node keys of the checkpoints involved (the fixture graph's cache
keys), so a rebuilt node invalidates exactly the diffs that used it. Files are written to a
temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.errors import HarnessError
from harness.atomic import write_bytes as atomic_write

CACHE_VERSION = "2"


def file_key(path: Path) -> str:
    """A content key for a checkpoint that has no graph key (synthetic checkpoints)."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*.safetensors")) if Path(path).is_dir() else [Path(path)]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


@dataclass
class NodeSet:
    """The checkpoints a claim can compare: node name -> merged checkpoint, its parent and its key."""

    paths: Mapping[str, Path]
    parents: Mapping[str, str | None]
    keys: Mapping[str, str] = field(default_factory=dict)

    def path(self, node: str) -> Path:
        try:
            return Path(self.paths[node])
        except KeyError:
            raise HarnessError(f"unknown node {node!r}; known: {', '.join(sorted(self.paths))}") from None

    def key(self, node: str) -> str:
        if node not in self.keys:
            self.keys = {**self.keys, node: file_key(self.path(node))}  # type: ignore[dict-item]
        return self.keys[node]

    def parent(self, node: str) -> str | None:
        self.path(node)
        return self.parents.get(node)

    def base(self) -> str:
        """The node with no parent (the graph's base)."""
        roots = [n for n in self.paths if self.parents.get(n) is None]
        if len(roots) != 1:
            raise HarnessError(f"the node set has {len(roots)} nodes without a parent; one base is expected")
        return roots[0]


@dataclass
class DiffSource:
    """Answers ``diff(a, b, ref)`` for the statistics, with an in-memory and an on-disk cache."""

    nodes: NodeSet
    cache_dir: Path | None = None
    device: str = "auto"
    progress: bool = False
    computed: int = 0
    _memo: dict[tuple[str, str, str | None], Any] = field(default_factory=dict)
    compare: Callable[..., Any] | None = None

    def parent(self, node: str) -> str | None:
        return self.nodes.parent(node)

    def base(self) -> str:
        return self.nodes.base()

    def cache_file(self, a: str, b: str, ref: str | None = None) -> Path | None:
        """Where ``diff(a, b, ref)`` is cached on disk (None without a cache folder)."""
        if self.cache_dir is None:
            return None
        # Names as well as keys: two nodes never share a diff even if a graph gave them one key.
        parts = [CACHE_VERSION, a, self.nodes.key(a), b, self.nodes.key(b), ref or "-",
                 self.nodes.key(ref) if ref else "-"]
        return Path(self.cache_dir) / (hashlib.sha256("|".join(parts).encode()).hexdigest()[:24] + ".json")

    def cached(self, a: str, b: str, ref: str | None = None) -> bool:
        """Whether ``diff(a, b, ref)`` is in the in-memory or the on-disk cache (a damaged file counts: it is
        recomputed when read)."""
        cache = self.cache_file(a, b, ref)
        return (a, b, ref) in self._memo or (cache is not None and cache.is_file())

    def diff(self, a: str, b: str, ref: str | None = None) -> Any:
        """The :class:`harness.diff.DiffReport` of checkpoint ``b`` against ``a`` (task vectors against ``ref``)."""
        from harness.diff.report import DiffReport

        memo_key = (a, b, ref)
        if memo_key in self._memo:
            return self._memo[memo_key]
        cache = self.cache_file(a, b, ref)
        if cache is not None and cache.is_file():
            try:
                report = json.loads(cache.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                report = None  # a foreign or damaged file: recompute and overwrite
            if report is not None:
                self._memo[memo_key] = DiffReport.from_dict(report)
                return self._memo[memo_key]
        compare = self.compare
        if compare is None:
            from harness.diff import compare
        base = self.nodes.path(ref) if ref else None
        result = compare(self.nodes.path(a), self.nodes.path(b), base, device=self.device, progress=self.progress)
        report = result if isinstance(result, DiffReport) else DiffReport.from_dict(dict(result))
        self.computed += 1
        if cache is not None:
            atomic_write(cache, json.dumps(report.to_dict()))
        self._memo[memo_key] = report
        return report
