"""Benchmarks of the weight-diff engine, each against the naive loop in the same run.

Run: ``pytest tests/benchmarks/test_bench_diff.py --benchmark-only`` (not in CI).

Environment:
- ``HARNESS_BENCH_DIFF_SCALE``: ``8b`` (Llama-3-8B shapes, 16.1 GB per bf16 checkpoint),
  ``small`` (default: 8 layers, hidden 1024, ~0.35 GB per checkpoint) or ``tiny``.
- ``HARNESS_BENCH_DIFF_DIR``: where the three random checkpoints are written (kept and reused).
- ``HARNESS_BENCH_DIFF_ROUNDS``: engine rounds (default 3); the naive loop runs once.

The naive loop: safetensors ``get_tensor`` for every side, fp32 torch ops, tensor by tensor
(moved to the GPU with ``.cuda()`` on the CUDA benchmarks), computing the same statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.diff import compare

SCALES = {  # layers, hidden, intermediate, kv width, vocab
    "8b": (32, 4096, 14336, 1024, 128256),
    "small": (8, 1024, 3584, 256, 32000),
    "tiny": (2, 256, 512, 64, 4096),
}
SCALE = os.environ.get("HARNESS_BENCH_DIFF_SCALE", "small")
ROUNDS = int(os.environ.get("HARNESS_BENCH_DIFF_ROUNDS", "3"))
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (the GPU machine)")


def llama_shapes(scale: str) -> dict:
    layers, h, inter, kv, vocab = SCALES[scale]
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (vocab, h)})
    return shapes


def make_checkpoints(root: Path, scale: str, shards: int = 4) -> tuple[Path, Path, Path]:
    """Base R and two fine-tunes A = R + τa, B = R + τb: random bf16, ``shards`` shards each."""
    paths = tuple(root / n for n in ("a", "b", "base"))
    if (root / "done").exists():
        return paths
    dev = "cuda" if CUDA else "cpu"
    shapes = llama_shapes(scale)
    names = list(shapes)
    per = -(-len(names) // shards)
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=dev).manual_seed(0)
    maps = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        out = {p: {} for p in paths}
        for n in part:
            r = torch.randn(shapes[n], device=dev, generator=g) * 0.02
            out[paths[2]][n] = r.bfloat16().cpu()
            for p in paths[:2]:
                out[p][n] = (r + torch.randn(shapes[n], device=dev, generator=g) * 1e-3).bfloat16().cpu()
            del r
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        for p in paths:
            save_file(out[p], str(p / fname))
        maps.update({n: fname for n in part})
        del out
    for p in paths:
        (p / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": maps}))
    (root / "done").write_text(scale)
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = Path(os.environ.get("HARNESS_BENCH_DIFF_DIR") or tmp_path_factory.mktemp(f"diff-{SCALE}"))
    return make_checkpoints(root, SCALE)


def naive_loop(a: Path, b: Path, r: Path, device: str) -> dict:
    """The baseline: get_tensor every side, fp32 eager ops on ``device``, tensor by tensor."""
    files = {k: json.loads((p / "model.safetensors.index.json").read_text())["weight_map"]
             for k, p in (("a", a), ("b", b), ("r", r))}
    out = {}
    for name in files["a"]:
        ts = []
        for k, p in (("a", a), ("b", b), ("r", r)):
            with safe_open(str(p / files[k][name]), framework="pt") as f:
                ts.append(f.get_tensor(name).to(device).float())
        x, y, z = ts
        d = y - x
        ta, tb = x - z, y - z
        c = (ta * tb) < 0
        out[name] = [v.item() for v in (d.abs().sum(), d.pow(2).sum(), d.abs().max(), (d != 0).sum(),
                                         c.sum(), d[c].pow(2).sum(), (ta * tb).sum(), ta.pow(2).sum(),
                                         tb.pow(2).sum(), torch.isnan(d).sum())]
    return out


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if CUDA:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _file_bytes(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in p.glob("*.safetensors"))


@needs_cuda
def test_bench_seed_scale_cuda(benchmark, checkpoints):
    """Two fine-tunes + a base, all statistics, warm page cache, one GPU."""
    a, b, r = checkpoints
    compare(a, b, r, device="cuda", progress=False)  # warm the page cache and the kernel
    naive = _timed(lambda: naive_loop(a, b, r, "cuda"))
    rep = benchmark.pedantic(lambda: compare(a, b, r, device="cuda", progress=False), rounds=ROUNDS,
                             iterations=1)
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(scale=SCALE, naive_s=naive, engine_min_s=best, ratio=naive / best,
                                input_gb=_file_bytes(a, b, r) / 1e9,
                                host_read_gb_per_s=_file_bytes(a, b, r) / 1e9 / best,
                                total_l2=rep.total.l2)
    print(f"\nseed scale ({SCALE}) CUDA: engine {best:.3f} s, naive {naive:.3f} s, ratio {naive / best:.2f}x")


def test_bench_cpu_engine(benchmark, checkpoints):
    """The CPU engine (multithreaded torch) against the naive CPU loop; peak RSS in a subprocess."""
    a, b, r = checkpoints
    compare(a, b, r, device="cpu", progress=False)
    naive = _timed(lambda: naive_loop(a, b, r, "cpu"))
    benchmark.pedantic(lambda: compare(a, b, r, device="cpu", progress=False), rounds=ROUNDS, iterations=1)
    best = benchmark.stats.stats.min
    # Peak RSS of a fresh process during compare(): VmHWM, reset just before (ru_maxrss would
    # carry the forking pytest process's peak across exec).
    code = ("import re; from harness.diff import compare\n"
            "def hwm(): return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "open('/proc/self/clear_refs', 'w').write('5'); before = hwm()\n"
            f"compare({str(a)!r}, {str(b)!r}, {str(r)!r}, device='cpu', progress=False)\n"
            "print(before, hwm())")
    before, after = map(int, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    largest = max(n * m if m else n for n, m in ((s[0], s[1] if len(s) > 1 else 0)
                                                  for s in llama_shapes(SCALE).values())) * 2
    benchmark.extra_info.update(scale=SCALE, naive_s=naive, engine_min_s=best, ratio=naive / best,
                                threads=torch.get_num_threads(), largest_tensor_mb=largest / 2**20,
                                peak_rss_mb=after / 1024, rss_growth_mb=(after - before) / 1024,
                                rss_growth_over_largest=(after - before) * 1024 / largest)
    print(f"\nCPU engine ({SCALE}, {torch.get_num_threads()} threads): engine {best:.3f} s, naive {naive:.3f} s,"
          f" ratio {naive / best:.2f}x; RSS growth {(after - before) / 1024:.0f} MB = "
          f"{(after - before) * 1024 / largest:.2f}x the largest tensor ({largest / 2**20:.0f} MB)")


KERNEL_CONFIGS = [  # block, warps, programs per SM, blocks per fp32 group
    (2048, 8, 4, 8), (4096, 16, 4, 8), (4096, 16, 4, 32), (4096, 16, 2, 16), (4096, 16, 8, 16),
    (8192, 32, 2, 8), (8192, 32, 2, 32), (4096, 8, 4, 16), (1024, 4, 8, 32), (2048, 8, 4, 32)]


@needs_cuda
@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=lambda c: "b{}-w{}-p{}-k{}".format(*c))
def test_bench_fused_in_hbm(benchmark, config):
    """The fused kernel alone on a 470M-element bf16 triple already in HBM: TB/s of input read."""
    import harness.diff.cuda as cuda
    from harness.diff import DiffSettings
    from harness.diff.stats import chunk_stats

    block, warps, per_sm, k_group = config
    settings = DiffSettings(block=block, warps=warps, programs_per_sm=per_sm, k_group=k_group)
    n = 470_000_000
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, device="cuda", generator=g).bfloat16()
    b = (a.float() + torch.randn(n, device="cuda", generator=g) * 1e-2).bfloat16()
    r = (a.float() + torch.randn(n, device="cuda", generator=g) * 1e-2).bfloat16()
    out = torch.zeros(cuda.grid_for(n, settings), 11, dtype=torch.float64, device="cuda")

    def fused():
        cuda.fused_stats(a, b, r, out, settings=settings)
        torch.cuda.synchronize()

    fused()
    got = cuda.reduce_partials(out.cpu().numpy())
    want = chunk_stats(a, b, r).cpu().numpy()
    assert got == pytest.approx(want, rel=1e-5)
    eager = _timed(lambda: chunk_stats(a, b, r), repeat=3)
    benchmark.pedantic(fused, rounds=20, iterations=1, warmup_rounds=2)
    best = benchmark.stats.stats.min
    tbps = 3 * n * 2 / best / 1e12
    benchmark.extra_info.update(config=list(config), fused_s=best, eager_s=eager, ratio=eager / best,
                                tb_per_s=tbps, eager_tb_per_s=3 * n * 2 / eager / 1e12)
    print(f"\nfused in HBM {config}: {tbps:.2f} TB/s, eager {3 * n * 2 / eager / 1e12:.2f} TB/s, "
          f"ratio {eager / best:.1f}x")


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("layers", [1, 32], ids=["one-layer", "whole-8b"])
def test_bench_lora_l2_factored(benchmark, device, layers):
    """L2 of rank-8 LoRA deltas on every linear of Llama-3-8B layers: factors vs materialised."""
    if device == "cuda" and not CUDA:
        pytest.skip("needs a CUDA device (the GPU machine)")
    if device == "cpu" and layers > 1 and os.environ.get("HARNESS_BENCH_DIFF_SCALE", "small") != "8b":
        pytest.skip("materialising 32 layers on the CPU takes minutes; set HARNESS_BENCH_DIFF_SCALE=8b")
    from harness.diff.lora import LoraDelta, sumsq_many

    _, h, inter, kv, _ = SCALES["8b"]
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (inter, h), (inter, h), (h, inter)] * layers
    g = torch.Generator(device=device).manual_seed(0)
    deltas = [LoraDelta(torch.randn(8, i, device=device, generator=g), torch.randn(o, 8, device=device, generator=g),
                        16.0) for o, i in shapes]

    def materialised():
        return sum(float(d.materialize().double().pow(2).sum()) for d in deltas)

    def factored():
        return sum(sumsq_many(deltas))

    naive = _timed(materialised, repeat=1 if layers > 1 else 2)
    got = benchmark(factored)
    assert got == pytest.approx(materialised(), rel=1e-4)
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(device=device, modules=len(deltas), materialised_s=naive, factored_s=best,
                                ratio=naive / best)
    print(f"\nLoRA L2 ({device}, {layers} 8B layer(s), {len(deltas)} modules, r=8): factored {best * 1e3:.3f} ms, "
          f"materialised {naive * 1e3:.1f} ms, ratio {naive / best:.0f}x")
