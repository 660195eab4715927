"""One-pass statistics of a weight difference, and how they combine.

Every backend reduces a tensor (or a chunk of one) to the same raw vector of sums, in the
order of :data:`RAW`. Chunk sums are taken in fp32 (torch's cascade summation on the CPU) and
accumulated across chunks in float64; :class:`Stats` is derived from the summed raw vector.

A position whose inputs are not all finite is "bad": it is counted under ``nan`` (some input
is NaN) or ``inf`` (some input is +-Inf, none NaN) and left out of every other statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import torch

from harness.registry import Registry

# Layout of the raw vector every backend produces (float64; counts are exact below 2**53).
RAW = ("l1", "sumsq", "max_abs", "changed", "conflicts", "conflict_sumsq",
       "dot", "norm_a2", "norm_b2", "nan", "inf")
NRAW = len(RAW)
I = {name: i for i, name in enumerate(RAW)}

# The statistics a report carries, by name. Each maps a combined raw vector (and numel, and
# whether a reference was given) to a value; ``None`` means "not defined" (JSON null).
STATISTICS: Registry = Registry("statistic")


def _stat(name: str):
    return STATISTICS.register(name)


_stat("numel")(lambda raw, numel, ref: int(numel))
_stat("l1")(lambda raw, numel, ref: float(raw[I["l1"]]))
_stat("l2")(lambda raw, numel, ref: math.sqrt(raw[I["sumsq"]]))
_stat("max_abs")(lambda raw, numel, ref: float(raw[I["max_abs"]]))
_stat("changed")(lambda raw, numel, ref: int(raw[I["changed"]]))
_stat("conflicts")(lambda raw, numel, ref: int(raw[I["conflicts"]]) if ref else None)
_stat("conflict_rate")(
    lambda raw, numel, ref: (raw[I["conflicts"]] / numel if numel else 0.0) if ref else None)
_stat("conflict_l2")(lambda raw, numel, ref: math.sqrt(raw[I["conflict_sumsq"]]) if ref else None)


@_stat("cosine")
def _cosine(raw: np.ndarray, numel: int, ref: bool) -> Optional[float]:
    denom = math.sqrt(raw[I["norm_a2"]]) * math.sqrt(raw[I["norm_b2"]])
    if not ref or denom == 0.0:
        return None
    return float(raw[I["dot"]] / denom)


_stat("nan")(lambda raw, numel, ref: int(raw[I["nan"]]))
_stat("inf")(lambda raw, numel, ref: int(raw[I["inf"]]))

FIELDS = ("numel", "l1", "l2", "max_abs", "changed", "conflicts", "conflict_rate",
          "conflict_l2", "cosine", "nan", "inf")


def combine_raw(raws: Iterable[np.ndarray]) -> np.ndarray:
    """Sum raw vectors: every entry adds except ``max_abs``, which takes the max."""
    out = np.zeros(NRAW, dtype=np.float64)
    for r in raws:
        m = max(out[I["max_abs"]], r[I["max_abs"]])
        out += r
        out[I["max_abs"]] = m
    return out


@dataclass
class Stats:
    """Statistics of one group (tensor, layer, module, other, total).

    L1 and counts add over groups; L2 and Conflict-Limited L2 are the root of the summed
    squares (the study's rule). Conflict fields are ``None`` without a reference checkpoint.
    """

    numel: int = 0
    l1: float = 0.0
    l2: float = 0.0
    max_abs: float = 0.0
    changed: int = 0
    conflicts: Optional[int] = None
    conflict_rate: Optional[float] = None
    conflict_l2: Optional[float] = None
    cosine: Optional[float] = None
    nan: int = 0
    inf: int = 0
    layer: Optional[int] = None
    module: Optional[str] = None
    raw: np.ndarray = field(default_factory=lambda: np.zeros(NRAW), repr=False, compare=False)
    has_ref: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: np.ndarray, numel: int, has_ref: bool, **labels) -> "Stats":
        values = {name: STATISTICS.get(name)(raw, numel, has_ref) for name in FIELDS}
        return cls(**values, **labels, raw=np.asarray(raw, dtype=np.float64).copy(), has_ref=has_ref)

    @classmethod
    def combine(cls, parts: Iterable["Stats"], **labels) -> "Stats":
        parts = list(parts)
        has_ref = any(p.has_ref for p in parts)
        return cls.from_raw(combine_raw(p.raw for p in parts), sum(p.numel for p in parts),
                            has_ref, **labels)

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        """The statistics of a :meth:`to_dict` (a stored report); raw sums are not kept in JSON."""
        known = {f for f in FIELDS} | {"layer", "module"}
        return cls(**{k: v for k, v in d.items() if k in known}, has_ref=d.get("conflict_rate") is not None)

    def to_dict(self) -> dict:
        d: dict = {}
        if self.layer is not None:
            d["layer"] = self.layer
        if self.module is not None:
            d["module"] = self.module
        for name in FIELDS:
            d[name] = getattr(self, name)
        return d


def chunk_stats(a: torch.Tensor, b: torch.Tensor, r: Optional[torch.Tensor] = None,
                _clean: bool = False) -> torch.Tensor:
    """Raw statistics (see :data:`RAW`) of one chunk, in one pass over fp32 copies.

    ``a``, ``b`` and ``r`` are flat tensors of any float dtype on any device; they are
    upcast to fp32. Returns a float64 vector of length :data:`NRAW` on the same device.
    """
    a = a.float()
    b = b.float()
    d = b - a
    ad = d.abs()
    sq = d * d
    parts = [ad.sum(), sq.sum(), ad.max() if ad.numel() else ad.new_zeros(()),
             (d != 0).sum()]
    if r is not None:
        r = r.float()
        ta = a - r
        tb = b - r
        conflict = (ta.sign() * tb.sign()) < 0
        parts += [conflict.sum(), (sq * conflict).sum(), (ta * tb).sum(), (ta * ta).sum(),
                  (tb * tb).sum()]
    else:
        zero = ad.new_zeros(())
        parts += [zero] * 5
    out = torch.stack([p.to(torch.float64) for p in parts] + [d.new_zeros((), dtype=torch.float64)] * 2)
    if _clean:
        return out
    # A non-finite input makes l1 (or a reference norm) non-finite: redo the chunk masked.
    if not bool(torch.isfinite(out[[0, 6, 7, 8]]).all()):
        return _masked_chunk_stats(a, b, r)
    return out


def _masked_chunk_stats(a: torch.Tensor, b: torch.Tensor, r: Optional[torch.Tensor]) -> torch.Tensor:
    finite = torch.isfinite(a) & torch.isfinite(b)
    isnan = torch.isnan(a) | torch.isnan(b)
    if r is not None:
        finite &= torch.isfinite(r)
        isnan |= torch.isnan(r)
    zero = a.new_zeros(())
    a = torch.where(finite, a, zero)
    b = torch.where(finite, b, zero)
    r = torch.where(finite, r, zero) if r is not None else None
    out = chunk_stats(a, b, r, _clean=True)
    n_nan = isnan.sum().to(torch.float64)
    out[I["nan"]] = n_nan
    out[I["inf"]] = (~finite).sum().to(torch.float64) - n_nan
    return out
