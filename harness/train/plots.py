"""Training-curve PNGs (matplotlib, headless): loss, and for DPO rewards/accuracies and margins."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_log(log: Sequence[dict], path: str | Path, title: str) -> Path | None:
    """Plot every curve present in ``log`` against its step; ``None`` when the log is empty."""
    rows = [r for r in log if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("loss", "rewards/accuracies", "rewards/margins") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        pts = [(r.get("step", i + 1), r[key]) for i, r in enumerate(rows) if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label="train" if key == "loss" else key)
        if key == "loss" and any("eval_loss" in r for r in rows):
            ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
            ax.plot([p[0] for p in ev], [p[1] for p in ev], "o-", ms=3, label="held-out")
            ax.legend()
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
