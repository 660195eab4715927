"""What the diff table and plot say: top-k when k covers every layer, column alignment with long
module names, and what the conflict rate divides by."""

from __future__ import annotations

import re

import pytest
import torch

from diff_helpers import random_state, write_checkpoint
from harness.__main__ import main
from harness.diff import compare

N_LAYERS = 4
# LoRA-like: every task vector touches only the projections; embeddings and norms stay at R.
LAYOUT = {"model.embed_tokens.weight": (16, 8), "model.norm.weight": (8,), "lm_head.weight": (16, 8)}
for _i in range(N_LAYERS):
    LAYOUT |= {f"model.layers.{_i}.self_attn.q_proj.weight": (8, 8),
               f"model.layers.{_i}.mlp.up_proj.weight": (12, 8),
               f"model.layers.{_i}.post_attention_layernorm.weight": (8,)}
TOUCHED = ("q_proj", "up_proj")


def _task(base: dict, seed: int) -> dict:
    """``base`` plus a random update of the projections only, growing with depth."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in base.items():
        if any(m in name for m in TOUCHED):
            depth = int(re.search(r"layers\.(\d+)\.", name).group(1)) + 1
            t = t + 0.01 * depth * torch.randn(t.shape, generator=g)
        out[name] = t.contiguous()
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    r = random_state(LAYOUT, 0)
    paths = {k: write_checkpoint(root / k, v, "single") for k, v in
             {"r": r, "a": _task(r, 1), "b": _task(r, 2)}.items()}
    return paths, compare(paths["a"], paths["b"], paths["r"], device="cpu", progress=False)


def _marked(table: str) -> list[str]:
    return [line.split()[1] for line in table.splitlines() if line.startswith(" *")]


def test_top_k_below_the_layer_count_marks_the_largest(family):
    _, rep = family
    table = rep.table(top_k=2)
    assert _marked(table) == [str(x) for x in sorted(rep.top_layers(2))] == ["2", "3"]
    assert "* top-2 layers by L2" in table


@pytest.mark.parametrize("k", [N_LAYERS, 10])
def test_top_k_covering_every_layer_marks_none_and_says_so(family, k):
    _, rep = family
    table = rep.table(top_k=k)
    assert _marked(table) == []
    assert f"no layer marked: top-{k} would take all {N_LAYERS} layers" in " ".join(table.split())
    assert rep.marked_layers(k) == set()


def test_plot_colours_no_bar_when_top_k_covers_every_layer(family, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    _, rep = family
    for k, red in ((10, 0), (N_LAYERS, 0), (1, 1)):
        fig = rep.figure(top_k=k)
        ax = fig.axes[0]
        assert sum(p.get_facecolor() == to_rgba("tab:red") for p in ax.patches) == red
        assert ("none marked" in ax.get_title()) == (red == 0)
        plt.close(fig)
    rep.plot(str(tmp_path / "d.png"), top_k=10)
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_module_table_columns_line_up_with_long_names(family):
    _, rep = family
    lines = rep.table(by="module").splitlines()
    head, rows = lines[0], [x for x in lines[2:] if x.startswith("   ") and x.split()[0] != "rate"]
    assert "post_attention_layernorm" in {x.split()[0] for x in rows}
    ends = [head.index(col) + len(col) for col in ("L1", "L2", "conflicts", "rate", "confl. L2", "cosine")]
    for line in rows:
        assert len(line) == len(head), line
        for end in ends:  # every value ends under the end of its (right-aligned) header
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), (line, end)


def test_total_conflict_rate_names_untouched_tensors_and_rate_without_them(family):
    paths, rep = family
    n, modules = rep.untouched()
    untouched = {k for k in LAYOUT if not any(m in k for m in TOUCHED)}
    assert n == sum(torch.Size(LAYOUT[k]).numel() for k in untouched)
    assert modules == sorted({"embed_tokens", "norm", "lm_head", "post_attention_layernorm"})
    touched = rep.total.numel - n
    assert rep.total.conflict_rate < min(s.conflict_rate for s in rep.layers)
    text = " ".join(rep.table().split())
    assert "rate = conflicts / every position of the row, changed or not" in text
    assert f"{n:,} of the total's {rep.total.numel:,} positions" in text
    assert f"without them it is {rep.total.conflicts / touched:.3g}" in text
    # ... which sits among the layers' rates, unlike the total's own.
    assert min(s.conflict_rate for s in rep.layers) <= rep.total.conflicts / touched <= \
        max(s.conflict_rate for s in rep.layers)


def test_cli_prints_the_same_table(family, capsys):
    paths, rep = family
    assert main(["diff", str(paths["a"]), str(paths["b"]), "--base", str(paths["r"]), "--no-progress",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "no layer marked: top-10" in " ".join(out.split()) and _marked(out) == []
