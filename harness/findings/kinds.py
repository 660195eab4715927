"""Claim kinds: what a spec's statistics read, who registers them, and how the runner builds their source.

A kind names a provider module (imported only when a spec of that kind loads, so ``harness.findings``
never imports the engines at import time), a source builder (``"module:function"``, called by the
runner with the session, the spec and the pair) and the pytest markers of its cases.

Statistics are registered for a kind with :func:`register_statistic` into :data:`STATISTICS` (kept
here, below the specs and the statistics, so that neither imports the other); a statistic added to
``STATISTICS`` directly (older providers) is accepted by every kind. A name registered twice is an error.
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
    Kind("similarity", "harness.findings.outputs", "harness.findings.sources:similarity", ("gpu",),
         "BLEU/BERTScore of the SFT nodes' generations against each dataset (seed table 24)"),
    Kind("judge", "harness.findings.outputs", "harness.findings.sources:judge", ("gpu", "judge"),
         "mean LLM-judge scores of the nodes' generations (seed table 25)"),
):
    KINDS.add(_k.name, _k)

Statistic = Callable[..., float]


class StatisticRegistry(Registry[Statistic]):
    """The statistics of every kind: name -> function, and name -> the kind it was registered for."""

    def __init__(self) -> None:
        super().__init__("statistic")
        self.kinds: dict[str, str] = {}

    def _state(self) -> Any:
        return dict(self._items), dict(self.kinds)

    def _restore(self, state: Any) -> None:
        self._items, self.kinds = state

    def accepts(self, kind: str, name: str) -> bool:
        """Whether statistic ``name`` belongs to ``kind`` (one added without a kind belongs to every kind)."""
        return self.kinds.get(name, kind) == kind


#: every registered statistic; a second registration under a name is an error naming both functions
STATISTICS = StatisticRegistry()


def register_statistic(kind: str, name: str, fn: Statistic) -> Statistic:
    """Register ``fn`` as statistic ``name`` of ``kind``; a name registered before (by any kind) is an error."""
    KINDS.get(kind)
    STATISTICS.add(name, fn)
    STATISTICS.kinds[name] = kind
    return fn


def statistic(kind: str, name: str) -> Callable[[Statistic], Statistic]:
    """Decorator form of :func:`register_statistic`."""
    return lambda fn: register_statistic(kind, name, fn)


def check_statistic(kind: str, name: str) -> str | None:
    """None when ``name`` is a statistic of ``kind`` (loading the kind's provider), else the problem."""
    KINDS.get(kind).load()
    if name not in STATISTICS:
        known = [n for n in STATISTICS.names() if STATISTICS.accepts(kind, n)]
        return f"unknown statistic {name!r} for kind {kind!r}; known: {', '.join(known)}"
    if not STATISTICS.accepts(kind, name):
        return f"statistic {name!r} belongs to kind {STATISTICS.kinds[name]}, not {kind!r}"
    return None
