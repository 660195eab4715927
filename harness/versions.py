"""Installed library versions, read from package metadata (no imports of the libraries themselves)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Iterable, Mapping

# What a findings file records: the stack a fine-tuning finding was measured with.
STACK = ("torch", "transformers", "trl", "peft", "bitsandbytes")


def library_versions(names: Iterable[str] = STACK) -> dict[str, str]:
    """``{name: version}`` for each package; ``"absent"`` when it is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def version_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """One ``"name old -> new"`` line per library whose version differs (names in either mapping)."""
    names = sorted(set(old) | set(new))
    return [f"{n} {old.get(n, 'unrecorded')} -> {new.get(n, 'unrecorded')}"
            for n in names if old.get(n) != new.get(n)]
