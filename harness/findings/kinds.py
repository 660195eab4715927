"""Claim kinds: what a spec's statistics read, who registers them, and how the runner builds their source.

A kind names a provider module (imported only when a spec of that kind loads, so ``harness.findings``
never imports the engines at import time), a source builder (``"module:function"``, called by the
runner with the session, the spec and the pair) and the pytest markers of its cases.

Statistics are registered for a kind with :func:`register_statistic`; a statistic added to
``STATISTICS`` directly (older providers) is accepted by every kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from harness.registry import Registry


@dataclass(frozen=True)
class Kind:
    """One kind of claim: its statistics' provider, its source builder and its markers."""

    name: str
    provider: str
    source: str
    marks: tuple[str, ...]
    about: str

    def load(self) -> None:
        """Import the provider, which registers the kind's statistics."""
        importlib.import_module(self.provider)

    def builder(self) -> Callable[..., Any]:
        module, _, fn = self.source.partition(":")
        return getattr(importlib.import_module(module), fn)


KINDS: Registry[Kind] = Registry("claim kind")
for _k in (
    Kind("weights", "harness.findings.statistics", "harness.findings.sources:weights", ("gpu",),
         "weight diffs between the graph's merged checkpoints (harness.diff)"),
    Kind("generations", "harness.findings.statistics", "harness.findings.sources:generations", ("gpu",),
         "a node's greedy generations on the held-out prompts (stop tokens, EOS text)"),
    Kind("similarity", "harness.evaluate.claims", "harness.findings.sources:similarity", ("gpu",),
         "BLEU/BERTScore of the SFT nodes' generations against each dataset (seed table 24)"),
    Kind("judge", "harness.evaluate.claims", "harness.findings.sources:judge", ("gpu", "judge"),
         "mean LLM-judge scores of the nodes' generations (seed table 25)"),
):
    KINDS.add(_k.name, _k)

#: statistic name -> the kinds it was registered for
_STAT_KINDS: dict[str, set[str]] = {}


def register_statistic(kind: str, name: str, fn: Callable[..., float]) -> Callable[..., float]:
    """Register ``fn`` as statistic ``name`` of ``kind`` (idempotent for the same function)."""
    from harness.findings.statistics import STATISTICS

    KINDS.get(kind)
    if name not in STATISTICS:
        STATISTICS.add(name, fn)
    _STAT_KINDS.setdefault(name, set()).add(kind)
    return fn


def statistic(kind: str, name: str) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator form of :func:`register_statistic`."""
    return lambda fn: register_statistic(kind, name, fn)


def check_statistic(kind: str, name: str) -> str | None:
    """None when ``name`` is a statistic of ``kind`` (loading the kind's provider), else the problem."""
    from harness.findings.statistics import STATISTICS

    KINDS.get(kind).load()
    if name not in STATISTICS:
        known = [n for n in STATISTICS.names() if kind in _STAT_KINDS.get(n, {kind})]
        return f"unknown statistic {name!r} for kind {kind!r}; known: {', '.join(known)}"
    if name in _STAT_KINDS and kind not in _STAT_KINDS[name]:
        return f"statistic {name!r} belongs to kind {', '.join(sorted(_STAT_KINDS[name]))}, not {kind!r}"
    return None
