"""The CUDA engine's fused Triton kernel and the CPU engine's :func:`chunk_stats` define each statistic
(a changed element, a sign conflict, the task-vector dot product, the non-finite counts) twice; here, on
the CPU, the kernel's own Python source runs with torch standing in for ``triton.language`` (one program
at a time, over the grid the CUDA engine launches) and must give chunk_stats' raw vector. A change to one
definition that the other lacks fails here, without a GPU. Also: a LoRA delta's product is taken in
float64 whatever the process set for fp32 matmuls (TF32 moved the CUDA diff of adapters)."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from harness.diff import cuda
from harness.diff.lora import LoraDelta
from harness.diff.settings import DiffSettings
from harness.diff.stats import I, NRAW, RAW, chunk_stats


class _Ptr:
    """A Triton pointer: a flat tensor and element offsets (an int or an index tensor)."""

    def __init__(self, data: torch.Tensor, offs=0) -> None:
        self.data, self.offs = data, offs

    def __add__(self, k) -> "_Ptr":
        return _Ptr(self.data, self.offs + k)


class _Value(torch.Tensor):
    """A Triton value: ``x += y`` makes a new value (a torch tensor would change every name bound to it)."""

    def __iadd__(self, other):
        return torch.Tensor.__add__(self, other)


def _v(t: torch.Tensor) -> _Value:
    return t.as_subclass(_Value)


class _Lang:
    """What the kernel uses of ``triton.language``, in torch, for one program (``pid`` of ``nprog``)."""

    int32, float32, float64 = torch.int32, torch.float32, torch.float64
    constexpr = object

    def __init__(self, pid: int, nprog: int) -> None:
        self.pid, self.nprog = pid, nprog

    def program_id(self, axis: int) -> int:
        return self.pid

    def num_programs(self, axis: int) -> int:
        return self.nprog

    @staticmethod
    def load(ptr: _Ptr, mask, other, eviction_policy=None) -> torch.Tensor:
        n = ptr.data.numel()
        idx = ptr.offs.clamp(0, max(n - 1, 0))
        return _v(torch.where(mask, ptr.data[idx], torch.tensor(other, dtype=ptr.data.dtype)))

    @staticmethod
    def store(ptr: _Ptr, value) -> None:
        ptr.data[ptr.offs] = torch.as_tensor(value).as_subclass(torch.Tensor)

    @staticmethod
    def zeros(shape, dtype) -> torch.Tensor:
        return _v(torch.zeros(tuple(shape), dtype=dtype))

    @staticmethod
    def full(shape, value, dtype) -> torch.Tensor:
        return _v(torch.full(tuple(shape), value, dtype=dtype))

    arange = staticmethod(lambda start, end: _v(torch.arange(start, end)))
    range = staticmethod(range)
    abs = staticmethod(torch.abs)
    where = staticmethod(lambda c, x, y: torch.where(c, x, torch.as_tensor(y, dtype=x.dtype)
                                                     if not torch.is_tensor(y) else y))
    maximum = staticmethod(torch.maximum)
    sum = staticmethod(lambda x, axis: x.sum(axis))
    max = staticmethod(lambda x, axis: x.max(axis).values)


def _python(fn, lang: _Lang, funcs: dict) -> types.FunctionType:
    raw = getattr(fn, "fn", fn)  # a Triton JITFunction keeps the Python function as .fn
    return types.FunctionType(raw.__code__, {**raw.__globals__, "tl": lang, **funcs}, raw.__name__)


def kernel_raw(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor | None, settings: DiffSettings) -> np.ndarray:
    """The raw statistics the CUDA engine's Triton kernel computes for flat ``a``, ``b``, ``r``: its grid (as
    :func:`cuda.grid_for` sizes it, here with 4 SMs), every program run, the rows reduced as on the host."""
    n = a.numel()
    grid = max(1, min(math.ceil(n / settings.block), 4 * settings.programs_per_sm))
    iters = math.ceil(n / (grid * settings.block * settings.k_group))
    out = torch.zeros(grid * NRAW, dtype=torch.float64)
    for pid in range(grid):
        lang = _Lang(pid, grid)
        funcs: dict = {}
        funcs["_block_stats"] = _python(cuda._block_stats, lang, funcs)
        funcs["_range_stats"] = _python(cuda._range_stats, lang, funcs)
        kernel = _python(cuda._diff_kernel, lang, funcs)
        kernel(_Ptr(a.flatten()), _Ptr(b.flatten()), _Ptr((r if r is not None else a).flatten()), _Ptr(out), n,
               iters, r is not None, settings.block, settings.k_group)
    return cuda.reduce_partials(out.reshape(grid, NRAW).numpy())


def _inputs(n: int, dtype: torch.dtype, seed: int, bad: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g).to(dtype)
    b = a.clone()
    moved = torch.rand(n, generator=g) < 0.6  # some elements unchanged: 'changed' counts the others
    b[moved] = (a.float()[moved] + 0.5 * torch.randn(int(moved.sum()), generator=g)).to(dtype)
    r = (a.float() + 0.3 * torch.randn(n, generator=g)).to(dtype)  # conflicts where a and b sit on R's two sides
    if bad:
        b[3], r[10], r[20], a[n - 2] = float("nan"), float("-inf"), float("nan"), float("inf")
    return a, b, r


@pytest.mark.parametrize("bad", [False, True], ids=["finite", "non-finite"])
@pytest.mark.parametrize("with_ref", [True, False], ids=["with-R", "no-R"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_kernel_computes_chunk_stats(dtype, with_ref, bad):
    settings = DiffSettings(block=64, k_group=2, programs_per_sm=1)  # several programs, several groups each
    a, b, r = _inputs(1000, dtype, 0, bad)  # 1000: the last block is partly masked
    r = r if with_ref else None
    want = chunk_stats(a, b, r).numpy()
    got = kernel_raw(a, b, r, settings)
    counts = [I[k] for k in ("changed", "conflicts", "nan", "inf")]
    assert got[counts].tolist() == want[counts].tolist(), dict(zip(RAW, zip(got, want)))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9), dict(zip(RAW, zip(got, want)))
    assert want[I["changed"]] > 0 and (want[I["conflicts"]] > 0) == with_ref
    assert (want[I["nan"]] > 0) == bad


def test_a_changed_kernel_definition_is_seen():
    """The comparison can fail: the kernel with its sign-conflict test narrowed to one direction."""
    import ast
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(getattr(cuda._block_stats, "fn", cuda._block_stats)))
    src = src[src.index("def "):]
    narrowed = src.replace("c = ((ta > 0) & (tb < 0)) | ((ta < 0) & (tb > 0))", "c = (ta > 0) & (tb < 0)")
    assert narrowed != src
    scope: dict = {}
    exec(compile(ast.parse(narrowed), "<narrowed>", "exec"), dict(vars(cuda)), scope)
    original = cuda._block_stats
    try:
        cuda._block_stats = scope["_block_stats"]
        a, b, r = _inputs(500, torch.float32, 1, False)
        got = kernel_raw(a, b, r, DiffSettings(block=64, k_group=2, programs_per_sm=1))
    finally:
        cuda._block_stats = original
    assert got[I["conflicts"]] < chunk_stats(a, b, r).numpy()[I["conflicts"]]


def test_a_lora_delta_is_the_float64_product_whatever_fp32_matmuls_are_set_to():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(8, 96, generator=g), torch.randn(64, 8, generator=g)
    delta = LoraDelta(A, B, 2.0)
    exact = ((B.double() @ A.double()) * 2.0).float()
    before = torch.get_float32_matmul_precision()
    try:
        for precision in ("highest", "medium"):  # "medium" lets fp32 matmuls run in bf16 where supported
            torch.set_float32_matmul_precision(precision)
            assert torch.equal(delta.materialize(), exact)
            assert torch.equal(delta.rows(5, 17), exact[5:17])
    finally:
        torch.set_float32_matmul_precision(before)
    t = LoraDelta(A, B.T.contiguous().T, 2.0, fan_in_fan_out=True)  # GPT-2's Conv1D layout: the transpose
    assert torch.equal(t.materialize(), exact.T.contiguous())
