"""CPU and CUDA paths give the same results (runs on the GPU machine; skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from diff_helpers import random_state, write_checkpoint
from harness.diff import DiffSettings, compare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: the fused kernel runs on the GPU machine")

FIELDS = ("numel", "l1", "l2", "max_abs", "changed", "conflicts", "conflict_rate", "conflict_l2",
          "cosine", "nan", "inf")


def _same(x, y, rtol=1e-6, cos_atol=1e-9):
    for sx, sy in zip([x.total, x.other, *x.layers, *x.modules], [y.total, y.other, *y.layers, *y.modules]):
        for f in FIELDS:
            vx, vy = getattr(sx, f), getattr(sy, f)
            if vx is None or vy is None:
                assert vx is vy, f
            else:
                atol = cos_atol if f == "cosine" else 1e-9  # cosine near 0 is a cancellation
                assert vx == pytest.approx(vy, rel=rtol, abs=atol), (f, sx.layer, sx.module, vx, vy)


@pytest.mark.parametrize("kernel", ["triton", "eager"])
@pytest.mark.parametrize("slot_bytes", [1 << 12, 256 << 20])
def test_cuda_matches_cpu(arch_layouts, tmp_path, kernel, slot_bytes):
    settings = DiffSettings(kernel=kernel, slot_bytes=slot_bytes)  # small slots: many chunks per tensor
    for arch in ("llama", "gpt2"):
        lay = arch_layouts[arch]
        a = random_state(lay, 1, dtype=torch.bfloat16)
        b = random_state(lay, 2, dtype=torch.float32, zero_frac=0.3)
        r = random_state(lay, 3, dtype=torch.bfloat16)
        name = sorted(lay)[3]
        b[name].view(-1)[:2] = float("nan")
        r[name].view(-1)[4:7] = float("-inf")
        pa = write_checkpoint(tmp_path / f"{arch}a", a, "index", 1)
        pb = write_checkpoint(tmp_path / f"{arch}b", b, "single")
        pr = write_checkpoint(tmp_path / f"{arch}r", r, "bare")
        for args in [(pa, pb, pr), (pa, pb, None), (pa, pa, pr)]:
            cpu = compare(*args, device="cpu", progress=False)
            gpu = compare(*args, device="cuda", progress=False, settings=settings)
            assert gpu.meta["device"] == "cuda"
            _same(cpu, gpu)
        assert cpu.total.nan == 0 and compare(pa, pb, pr, device="cuda", progress=False,
                                                   settings=settings).total.nan == 2


@pytest.mark.parametrize("fp32_matmul", ["ieee", "tf32"])
def test_cuda_adapters_match_cpu(tmp_path, fp32_matmul):
    """Also with TF32 on for fp32 matmuls, as transformers leaves it after building a compiled trainer in the
    same process (the LoRA product B @ A is taken in float64, so the setting cannot reach it)."""
    from test_diff_lora import _peft_pair

    base, ad1, _ = _peft_pair(tmp_path, "llama", 1)
    _, ad2, m2 = _peft_pair(tmp_path, "llama", 2)
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = fp32_matmul
    try:
        for args in [(ad1, base, None), (ad1, ad2, base), (ad1, m2, base)]:
            _same(compare(*args, device="cpu", progress=False), compare(*args, device="cuda", progress=False),
                  rtol=1e-5, cos_atol=1e-6)
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


def test_fused_kernel_group_sizes_agree():
    import numpy as np

    from harness.diff.cuda import fused_stats, grid_for, reduce_partials

    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(3_000_001, device="cuda", generator=g).bfloat16()
    b = (a.float() + 1e-2 * torch.randn(a.shape, device="cuda", generator=g)).bfloat16()
    r = (a.float() + 1e-2 * torch.randn(a.shape, device="cuda", generator=g)).bfloat16()
    outs = []
    for k in (1, 8, 64):
        out = torch.zeros(grid_for(a.numel()), 11, dtype=torch.float64, device="cuda")
        fused_stats(a, b, r, out, k)
        outs.append(reduce_partials(out.cpu().numpy()))
    assert np.allclose(outs[0], outs[1], rtol=1e-6) and np.allclose(outs[0], outs[2], rtol=1e-6)
