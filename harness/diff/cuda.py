"""The CUDA path: one fused Triton kernel over a, b and R, fed by a pinned-memory pipeline.

Each tensor is streamed in flat chunks. Host threads ``pread`` the stored bytes of every side
straight from the shard files (page cache) into pinned staging buffers; a copy stream moves
them to the device while the compute stream runs the kernel on the previous chunk. The kernel
reads each input once in its stored dtype, upcasts to fp32, and accumulates every statistic
of :data:`harness.diff.stats.RAW` per lane in fp32 over groups of ``k_group`` blocks, then in
float64 per program, writing one row of partial sums per program; the rows are reduced in float64
on the host at the end.

Without Triton (or with ``DiffSettings(kernel="eager")``) the same pipeline runs the eager-torch
reduction :func:`harness.diff.stats.chunk_stats` instead. Block size, warps, programs per SM, the
fp32 group, the pinned slots and the reader threads come from :class:`harness.diff.settings.DiffSettings`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from harness.diff.checkpoint import pread_full, torch_dtype
from harness.diff.settings import DiffSettings
from harness.diff.stats import I, NRAW, chunk_stats

try:  # Triton ships with CUDA builds of torch; the CPU machines have none.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
    jit = triton.jit
except ImportError:  # pragma: no cover - exercised on CPU-only machines
    HAVE_TRITON = False
    tl = None

    def jit(fn):
        """Without Triton the kernel stays plain Python: tests/diff/test_diff_kernel_source.py runs it on the
        CPU with torch standing in for ``triton.language`` and compares it with :func:`chunk_stats`."""
        return fn

DEFAULT = DiffSettings()

# The kernel. Its statistics are those of harness.diff.stats.chunk_stats (the CPU engine and the eager CUDA
# path), written per lane; tests/diff/test_diff_kernel_source.py runs both on the CPU and compares them.
@jit
def _block_stats(a_ptr, b_ptr, r_ptr, offs, n, HAS_R: tl.constexpr, MASKED: tl.constexpr):
    """Per-lane statistics of one block; ``MASKED`` zeroes non-finite positions and counts them."""
    m = offs < n
    a = tl.load(a_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    b = tl.load(b_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if HAS_R:
        r = tl.load(r_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        r = a
    nanc = tl.zeros(offs.shape, tl.int32)
    badc = tl.zeros(offs.shape, tl.int32)
    if MASKED:
        INF = float("inf")
        fin = (tl.abs(a) < INF) & (tl.abs(b) < INF) & (tl.abs(r) < INF)
        nanc = ((a != a) | (b != b) | (r != r)).to(tl.int32)
        badc = (fin == 0).to(tl.int32)
        a = tl.where(fin, a, 0.0)
        b = tl.where(fin, b, 0.0)
        r = tl.where(fin, r, 0.0)
    d = b - a
    ad = tl.abs(d)
    sq = d * d
    chg = (d != 0).to(tl.int32)
    if HAS_R:
        ta = a - r
        tb = b - r
        c = ((ta > 0) & (tb < 0)) | ((ta < 0) & (tb > 0))
        cc = c.to(tl.int32)
        csq = tl.where(c, sq, 0.0)
        dot = ta * tb
        na2 = ta * ta
        nb2 = tb * tb
    else:
        cc = tl.zeros(offs.shape, tl.int32)
        csq = tl.zeros(offs.shape, tl.float32)
        dot = csq
        na2 = csq
        nb2 = csq
    return ad, sq, chg, cc, csq, dot, na2, nb2, nanc, badc

@jit
def _range_stats(a_ptr, b_ptr, r_ptr, n, iters, pid, nprog, HAS_R: tl.constexpr, MASKED: tl.constexpr,
                 BLOCK: tl.constexpr, K: tl.constexpr):
    """This program's strided share: fp32 per lane over K blocks, then float64 scalars."""
    zero64 = tl.full([], 0.0, tl.float64)
    l1_64 = zero64
    sq_64 = zero64
    csq_64 = zero64
    dot_64 = zero64
    na_64 = zero64
    nb_64 = zero64
    mx = tl.zeros([BLOCK], tl.float32)
    chg = tl.zeros([BLOCK], tl.int32)
    cf = tl.zeros([BLOCK], tl.int32)
    nan = tl.zeros([BLOCK], tl.int32)
    bad = tl.zeros([BLOCK], tl.int32)
    for it in tl.range(0, iters):
        base = (it * nprog + pid) * BLOCK * K
        l1 = tl.zeros([BLOCK], tl.float32)
        sq = tl.zeros([BLOCK], tl.float32)
        csq = tl.zeros([BLOCK], tl.float32)
        dot = tl.zeros([BLOCK], tl.float32)
        na = tl.zeros([BLOCK], tl.float32)
        nb = tl.zeros([BLOCK], tl.float32)
        for j in range(K):
            offs = base + j * BLOCK + tl.arange(0, BLOCK)
            s_ad, s_sq, s_chg, s_cc, s_csq, s_dot, s_na, s_nb, s_nan, s_bad = _block_stats(
                a_ptr, b_ptr, r_ptr, offs, n, HAS_R, MASKED)
            l1 += s_ad
            sq += s_sq
            mx = tl.maximum(mx, s_ad)
            chg += s_chg
            cf += s_cc
            csq += s_csq
            dot += s_dot
            na += s_na
            nb += s_nb
            nan += s_nan
            bad += s_bad
        # float64 accumulation across the K-block groups
        l1_64 += tl.sum(l1, 0).to(tl.float64)
        sq_64 += tl.sum(sq, 0).to(tl.float64)
        csq_64 += tl.sum(csq, 0).to(tl.float64)
        dot_64 += tl.sum(dot, 0).to(tl.float64)
        na_64 += tl.sum(na, 0).to(tl.float64)
        nb_64 += tl.sum(nb, 0).to(tl.float64)
    return (l1_64, sq_64, tl.max(mx, 0).to(tl.float64), tl.sum(chg, 0).to(tl.float64),
            tl.sum(cf, 0).to(tl.float64), csq_64, dot_64, na_64, nb_64,
            tl.sum(nan, 0).to(tl.float64), tl.sum(bad, 0).to(tl.float64))

@jit
def _diff_kernel(a_ptr, b_ptr, r_ptr, out_ptr, n, iters, HAS_R: tl.constexpr, BLOCK: tl.constexpr,
                 K: tl.constexpr):
    """One row of partial raw statistics per program; a, b and R are read once.

    The fast pass skips the finite checks: a non-finite input makes l1 or a task-vector
    norm non-finite, and only then does the program redo its share with masking.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    l1, sq, mx, chg, cf, csq, dot, na, nb, nan, bad = _range_stats(
        a_ptr, b_ptr, r_ptr, n, iters, pid, nprog, HAS_R, False, BLOCK, K)
    check = l1 + na + nb
    if not (check < float("inf")):
        l1, sq, mx, chg, cf, csq, dot, na, nb, nan, bad = _range_stats(
            a_ptr, b_ptr, r_ptr, n, iters, pid, nprog, HAS_R, True, BLOCK, K)
    row = out_ptr + pid * 11
    tl.store(row + 0, l1)
    tl.store(row + 1, sq)
    tl.store(row + 2, mx)
    tl.store(row + 3, chg)
    tl.store(row + 4, cf)
    tl.store(row + 5, csq)
    tl.store(row + 6, dot)
    tl.store(row + 7, na)
    tl.store(row + 8, nb)
    tl.store(row + 9, nan)
    tl.store(row + 10, bad - nan)


def kernel_name(settings: DiffSettings = DEFAULT) -> str:
    """The reduction the CUDA path will use: ``triton`` or ``eager``."""
    if HAVE_TRITON and settings.kernel == "triton":
        return "triton"
    return "eager"


def max_programs(settings: DiffSettings = DEFAULT) -> int:
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return sms * settings.programs_per_sm


def grid_for(n: int, settings: DiffSettings = DEFAULT) -> int:
    """Rows of partial statistics ``fused_stats`` writes for ``n`` elements."""
    if kernel_name(settings) != "triton":
        return 1
    return max(1, min(triton.cdiv(n, settings.block), max_programs(settings)))


def fused_stats(a: torch.Tensor, b: torch.Tensor, r: Optional[torch.Tensor], out: torch.Tensor,
                k_group: Optional[int] = None, settings: DiffSettings = DEFAULT) -> None:
    """Write partial raw statistics of flat CUDA tensors into ``out`` (``grid_for(n, settings)`` rows).

    ``k_group`` (default ``settings.k_group``) blocks are summed per lane in fp32 before each
    float64 accumulation.
    """
    n = a.numel()
    if kernel_name(settings) != "triton":
        out[0] = chunk_stats(a, b, r)
        return
    if n >= 2**31 - 2**27:
        raise ValueError(f"fused_stats takes under 2**31 elements per call, got {n}")
    k_group = k_group or settings.k_group
    grid = grid_for(n, settings)
    iters = triton.cdiv(n, grid * settings.block * k_group)
    _diff_kernel[(grid,)](a, b, r if r is not None else a, out, n, iters, HAS_R=r is not None,
                          BLOCK=settings.block, K=k_group, num_warps=settings.warps)


def reduce_partials(rows: np.ndarray) -> np.ndarray:
    """Combine partial rows in float64: sums add, ``max_abs`` takes the max."""
    if len(rows) == 0:
        return np.zeros(NRAW)
    out = rows.sum(axis=0)
    out[I["max_abs"]] = rows[:, I["max_abs"]].max()
    return out


class _Reader:
    """Parallel ``pread`` of byte ranges into pinned buffers; one descriptor per shard file."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads)
        self.threads = threads
        self.fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def read(self, jobs: list) -> None:
        """``jobs``: (path, file offset, memoryview) triples, split into pieces and read."""
        piece = 8 << 20
        futs = []
        for path, offset, mv in jobs:
            fd = self.fd(path)
            for s in range(0, len(mv), piece):
                futs.append(self.pool.submit(pread_full, fd, mv[s:s + piece], offset + s, path))
        for f in futs:
            f.result()

    def close(self) -> None:
        self.pool.shutdown()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _is_plain(job) -> bool:
    return not job.shared_base and all(d is None for d in job.deltas) and \
        all(not (s.is_adapter and s.replaced(job.name)) for s in job.sides)


def cuda_backend(jobs: list, bar, settings: DiffSettings = DEFAULT) -> dict[str, np.ndarray]:
    """Raw statistics of every job on the current CUDA device (see the module docstring)."""
    dev = torch.device("cuda")
    nsides = max((len(j.sides) for j in jobs), default=2)
    has_r = nsides == 3
    # Plan: flat chunks of the plainly stored tensors; LoRA / replaced tensors go dense.
    plan = []  # (job index, element start, element end)
    for k, job in enumerate(jobs):
        if job.trivially_zero or job.numel == 0 or not _is_plain(job):
            continue
        itemsize = max(torch_dtype(s.info(job.name), s.label).itemsize for s in job.sides)
        step = max(1, settings.slot_bytes // itemsize)
        for e0 in range(0, job.numel, step):
            plan.append((k, e0, min(job.numel, e0 + step)))
    dense = [k for k, j in enumerate(jobs) if not j.trivially_zero and j.numel and not _is_plain(j)]
    rows_of = [grid_for(e1 - e0, settings) for _, e0, e1 in plan]
    dense_rows = [grid_for(jobs[k].numel, settings) for k in dense]
    partials = torch.zeros((sum(rows_of) + sum(dense_rows) + 1, NRAW), dtype=torch.float64, device=dev)

    reader = _Reader(settings.reader_threads)
    slot_bytes = settings.slot_bytes
    pinned = [[torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(nsides)]
              for _ in range(min(settings.slots, max(1, len(plan))))] if plan else []
    devbuf = [[torch.empty(slot_bytes, dtype=torch.uint8, device=dev) for _ in range(nsides)]
              for _ in range(len(pinned))]
    ev_h2d = [torch.cuda.Event() for _ in pinned]
    ev_kern = [torch.cuda.Event() for _ in pinned]
    copy_stream, comp_stream = torch.cuda.Stream(), torch.cuda.Stream()
    filler = ThreadPoolExecutor(1)

    def fill(i: int) -> None:
        k, e0, e1 = plan[i]
        slot = i % len(pinned)
        ev_h2d[slot].synchronize()  # the previous user of this slot has left pinned memory
        job = jobs[k]
        reads = []
        for s, side in enumerate(job.sides):
            info = side.info(job.name)
            isz = torch_dtype(info, side.label).itemsize
            mv = memoryview(pinned[slot][s].numpy())[: (e1 - e0) * isz]
            reads.append((info.path, info.start + e0 * isz, mv))
        reader.read(reads)

    row = 0
    done_elems: dict[int, int] = {}
    try:
        futs = {i: filler.submit(fill, i) for i in range(min(len(pinned) - 1, len(plan)))}
        for i, (k, e0, e1) in enumerate(plan):
            slot = i % len(pinned)
            futs.pop(i).result()
            job = jobs[k]
            views = []
            with torch.cuda.stream(copy_stream):
                copy_stream.wait_event(ev_kern[slot])
                for s, side in enumerate(job.sides):
                    dtype = torch_dtype(side.info(job.name), side.label)
                    nb = (e1 - e0) * dtype.itemsize
                    devbuf[slot][s][:nb].copy_(pinned[slot][s][:nb], non_blocking=True)
                    views.append(devbuf[slot][s][:nb].view(dtype))
                ev_h2d[slot].record(copy_stream)
            with torch.cuda.stream(comp_stream):
                comp_stream.wait_event(ev_h2d[slot])
                fused_stats(views[0], views[1], views[2] if has_r else None,
                            partials[row:row + rows_of[i]], settings=settings)
                ev_kern[slot].record(comp_stream)
            row += rows_of[i]
            nxt = i + len(pinned) - 1
            if nxt < len(plan):
                futs[nxt] = filler.submit(fill, nxt)
            done_elems[k] = done_elems.get(k, 0) + (e1 - e0)
            if done_elems[k] == job.numel:
                bar.update(1)
        # Tensors with LoRA deltas (or adapter copies): materialise fp32 sides on the device.
        with torch.cuda.stream(comp_stream):
            for k, nrows in zip(dense, dense_rows):
                job = jobs[k]
                xs = []
                for side, delta in zip(job.sides, job.deltas):
                    if job.shared_base:
                        x = torch.zeros(job.shape2d(), dtype=torch.float32, device=dev)
                    else:
                        x = side.raw(job.name).to(dev).float().reshape(job.shape2d())
                    if delta is not None:
                        x = x + delta.to(dev).materialize()
                    xs.append(x.reshape(-1))
                fused_stats(xs[0], xs[1], xs[2] if has_r else None, partials[row:row + nrows], settings=settings)
                row += nrows
                bar.update(1)
        comp_stream.synchronize()
        host = partials.cpu().numpy()
    finally:
        filler.shutdown()
        reader.close()
    out = {j.name: np.zeros(NRAW) for j in jobs}
    row = 0
    per_job: dict[int, list] = {}
    for i, (k, _, _) in enumerate(plan):
        per_job.setdefault(k, []).append(host[row:row + rows_of[i]])
        row += rows_of[i]
    for k, nrows in zip(dense, dense_rows):
        per_job.setdefault(k, []).append(host[row:row + nrows])
        row += nrows
    for k, parts in per_job.items():
        out[jobs[k].name] = reduce_partials(np.concatenate(parts))
    bar.update(sum(1 for j in jobs if j.trivially_zero or j.numel == 0))
    return out
