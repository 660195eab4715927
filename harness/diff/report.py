"""DiffReport: per-layer, per-module, other and total statistics; table, JSON, CSV, plots."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from harness.atomic import atomic_path
from harness.diff.names import layer_of, module_of
from harness.diff.stats import FIELDS, I, Stats


def _atomic_write(path: str, write) -> None:
    """Write through a temporary file in the target folder, then rename into place."""
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp, open(tmp, "wb") as fh:
        write(fh)


@dataclass
class DiffReport:
    """The result of :func:`harness.diff.compare`.

    ``layers`` is sorted by layer index; ``modules`` by module name; ``tensors`` maps each
    tensor name to its statistics; ``grid`` maps ``(module, layer)`` to statistics.
    """

    layers: list[Stats]
    modules: list[Stats]
    other: Stats
    total: Stats
    tensors: dict[str, Stats] = field(default_factory=dict)
    grid: dict[tuple, Stats] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @classmethod
    def build(cls, raws: dict, numels: dict, has_ref: bool, meta: Optional[dict] = None) -> "DiffReport":
        tensors = {n: Stats.from_raw(raws[n], numels[n], has_ref) for n in raws}
        by_layer: dict[int, list] = {}
        by_module: dict[str, list] = {}
        by_cell: dict[tuple, list] = {}
        other = []
        for name, s in tensors.items():
            layer, module = layer_of(name), module_of(name)
            by_module.setdefault(module, []).append(s)
            if layer is None:
                other.append(s)
            else:
                by_layer.setdefault(layer, []).append(s)
                by_cell.setdefault((module, layer), []).append(s)
        layers = [Stats.combine(by_layer[k], layer=k) for k in sorted(by_layer)]
        modules = [Stats.combine(by_module[k], module=k) for k in sorted(by_module)]
        o = Stats.combine(other) if other else Stats.from_raw(np.zeros(11), 0, has_ref)
        total = Stats.combine(list(tensors.values())) if tensors else Stats.from_raw(np.zeros(11), 0, has_ref)
        grid = {k: Stats.combine(v, module=k[0], layer=k[1]) for k, v in by_cell.items()}
        return cls(layers, modules, o, total, tensors, grid, dict(meta or {}))

    # -- derived -------------------------------------------------------------------------
    def layer_l2_deviation(self) -> dict[int, float]:
        """Each layer's L2 minus the mean layer L2 (the study's "deviation from the mean")."""
        if not self.layers:
            return {}
        mean = float(np.mean([s.l2 for s in self.layers]))
        return {s.layer: s.l2 - mean for s in self.layers}

    def top_layers(self, k: int = 10) -> list[int]:
        """The ``k`` layers with the largest L2, largest first."""
        return [s.layer for s in sorted(self.layers, key=lambda s: -s.l2)[:k]]

    def marked_layers(self, k: int) -> set[int]:
        """The layers a table or plot highlights: the top ``k``, or none when ``k`` would take
        every layer (marking all of them says nothing)."""
        return set() if k >= len(self.layers) else set(self.top_layers(k))

    def untouched(self) -> tuple[int, list[str]]:
        """Positions (and module names) in tensors that neither task vector changes (A = B = R),
        from the per-tensor statistics; ``(0, [])`` without a reference or per-tensor data."""
        if not self.total.has_ref:
            return 0, []
        names = [n for n, s in self.tensors.items()
                 if s.raw[I["norm_a2"]] == 0.0 and s.raw[I["norm_b2"]] == 0.0 and s.changed == 0]
        return sum(self.tensors[n].numel for n in names), sorted({module_of(n) for n in names})

    @classmethod
    def from_dict(cls, d: dict) -> "DiffReport":
        """A report read back from :meth:`to_dict` (e.g. a cached JSON); per-tensor data is not stored."""
        return cls([Stats.from_dict(x) for x in d.get("layers", [])], [Stats.from_dict(x) for x in d.get("modules", [])],
                   Stats.from_dict(d.get("other", {})), Stats.from_dict(d.get("total", {})), meta=dict(d.get("meta", {})))

    # -- outputs -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"layers": [s.to_dict() for s in self.layers],
                "modules": [s.to_dict() for s in self.modules],
                "other": self.other.to_dict(), "total": self.total.to_dict(),
                "meta": self.meta}

    def to_json(self, path: str = "-") -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path == "-":
            sys.stdout.write(text + "\n")
        else:
            _atomic_write(path, lambda fh: fh.write(text.encode()))
        return text

    def to_csv(self, path: str) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["group", "name", *FIELDS])
        rows = [("layer", s.layer, s) for s in self.layers] + \
               [("module", s.module, s) for s in self.modules] + \
               [("other", "other", self.other), ("total", "total", self.total)]
        for group, name, s in rows:
            w.writerow([group, name, *("" if getattr(s, f) is None else getattr(s, f) for f in FIELDS)])
        _atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))

    def table(self, by: str = "layer", top_k: int = 10) -> str:
        """A text table like the study's tables 5 and 14 (``by="layer"``) or per module."""
        ref = self.total.has_ref
        labels = [str(s.layer) for s in self.layers] if by == "layer" else [str(s.module) for s in self.modules]
        width = max([16, *(len(x) for x in labels)])
        head = f"{'':>2} {'layer' if by == 'layer' else 'module':<{width}} {'L1':>14} {'L2':>12}"
        head += f" {'dev. mean':>11}" if by == "layer" else ""
        head += f" {'conflicts':>11} {'rate':>10} {'confl. L2':>11} {'cosine':>8}" if ref else ""
        lines = [head, "-" * len(head)]
        dev = self.layer_l2_deviation()
        top = self.marked_layers(top_k)

        def row(mark: str, label: str, s: Stats, deviation: Optional[float]) -> str:
            line = f"{mark:>2} {label:<{width}} {s.l1:>14,.2f} {s.l2:>12.6g}"
            if by == "layer":
                line += f" {deviation:>+11.4g}" if deviation is not None else f" {'':>11}"
            if ref:
                cos = f"{s.cosine:>8.4f}" if s.cosine is not None else f"{'-':>8}"
                line += f" {s.conflicts:>11,} {s.conflict_rate:>10.3g} {s.conflict_l2:>11.4g} {cos}"
            return line

        if by == "layer":
            for s in self.layers:
                lines.append(row("*" if s.layer in top else "", str(s.layer), s, dev[s.layer]))
            lines.append(row("", "other", self.other, None))
        else:
            for s in self.modules:
                lines.append(row("", s.module, s, None))
        lines.append("-" * len(head))
        lines.append(row("", "total", self.total, None))
        bad = self.total.nan + self.total.inf
        notes = []
        if by == "layer" and self.layers:
            mean = f"dev. mean = L2 - mean layer L2 ({np.mean([s.l2 for s in self.layers]):.6g})"
            if top:
                notes.append(f"* top-{top_k} layers by L2; {mean}")
            else:
                notes.append(f"no layer marked: top-{top_k} would take all {len(self.layers)} layers "
                             f"(--top-k below {len(self.layers)} marks the largest); {mean}")
        if ref:
            notes.append(self._rate_note())
        if bad:
            notes.append(f"non-finite positions left out: {self.total.nan:,} NaN, {self.total.inf:,} Inf")
        return "\n".join(lines + [textwrap.fill(n, width=max(len(head), 80), subsequent_indent="  ")
                                  for n in notes])

    def _rate_note(self) -> str:
        """Say what the conflict rate divides by, and the total's rate without untouched tensors."""
        note = "rate = conflicts / every position of the row, changed or not"
        n, modules = self.untouched()
        if n and self.total.numel > n:
            rate = self.total.conflicts / (self.total.numel - n)
            note += (f"; {n:,} of the total's {self.total.numel:,} positions lie in tensors neither "
                     f"task vector changes ({', '.join(modules)}), so the total's rate is below the "
                     f"layers'; without them it is {rate:.3g}")
        return note

    def plot(self, path: str, top_k: int = 10) -> None:
        """PNG: per-layer L2 deviation bars (top-k marked) and a module x layer L2 heatmap."""
        import matplotlib.pyplot as plt

        fig = self.figure(top_k)
        _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)

    def figure(self, top_k: int = 10):
        """The matplotlib figure :meth:`plot` saves."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        dev = self.layer_l2_deviation()
        top = self.marked_layers(top_k)
        layers = sorted(dev)
        modules = sorted({m for m, _ in self.grid})
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.3 * len(layers) + 3), 9))
        colors = ["tab:red" if l in top else "tab:gray" for l in layers]
        ax1.bar(layers, [dev[l] for l in layers], color=colors)
        ax1.axhline(0, color="black", linewidth=0.8)
        ax1.set_xlabel("layer")
        ax1.set_ylabel("L2 - mean layer L2")
        ax1.set_title(f"per-layer L2 deviation from the mean (red: top-{top_k})" if top else
                      f"per-layer L2 deviation from the mean (none marked: top-{top_k} would take all "
                      f"{len(layers)} layers)")
        grid = np.full((len(modules), len(layers)), np.nan)
        for (m, l), s in self.grid.items():
            grid[modules.index(m), layers.index(l)] = s.l2
        im = ax2.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax2.set_yticks(range(len(modules)), modules)
        ax2.set_xticks(range(len(layers)), layers)
        ax2.set_xlabel("layer")
        ax2.set_title("L2 by module and layer")
        fig.colorbar(im, ax=ax2, label="L2")
        fig.tight_layout()
        return fig
