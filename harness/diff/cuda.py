"""The CUDA path: one fused Triton kernel over a, b and R, fed by a pinned-memory pipeline.

Each tensor is streamed in flat chunks. Host threads ``pread`` the stored bytes of every side
straight from the shard files (page cache) into pinned staging buffers; a copy stream moves
them to the device while the compute stream runs the kernel on the previous chunk. The kernel
reads each input once in its stored dtype, upcasts to fp32, and accumulates every statistic
of :data:`harness.diff.stats.RAW` per lane in float64, writing one row of partial sums per
program; the rows are reduced in float64 on the host at the end.

Without Triton (or with ``HARNESS_DIFF_KERNEL=eager``) the same pipeline runs the eager-torch
reduction :func:`harness.diff.stats.chunk_stats` instead.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from harness.diff.checkpoint import pread_full, torch_dtype
from harness.diff.stats import I, NRAW, chunk_stats

try:  # Triton ships with CUDA builds of torch; the CPU machines have none.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised on CPU-only machines
    HAVE_TRITON = False

BLOCK = 2048
NUM_WARPS = 8
SLOT_BYTES = int(os.environ.get("HARNESS_DIFF_SLOT_MB", "256")) << 20
NSLOTS = 3

if HAVE_TRITON:

    @triton.jit
    def _diff_kernel(a_ptr, b_ptr, r_ptr, out_ptr, n, HAS_R: tl.constexpr, ACC64: tl.constexpr,
                     BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        if ACC64:
            acc = tl.zeros([BLOCK], tl.float64)
        else:
            acc = tl.zeros([BLOCK], tl.float32)
        l1 = acc
        sq = acc
        csq = acc
        dot = acc
        na2 = acc
        nb2 = acc
        mx = tl.zeros([BLOCK], tl.float32)
        changed = tl.zeros([BLOCK], tl.int32)
        conflicts = tl.zeros([BLOCK], tl.int32)
        nan = tl.zeros([BLOCK], tl.int32)
        bad = tl.zeros([BLOCK], tl.int32)
        INF = float("inf")
        for start in range(pid * BLOCK, n, nprog * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            a = tl.load(a_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            b = tl.load(b_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            fin = (tl.abs(a) < INF) & (tl.abs(b) < INF)
            isn = (a != a) | (b != b)
            if HAS_R:
                r = tl.load(r_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
                fin = fin & (tl.abs(r) < INF)
                isn = isn | (r != r)
                r = tl.where(fin, r, 0.0)
            a = tl.where(fin, a, 0.0)
            b = tl.where(fin, b, 0.0)
            d = b - a
            ad = tl.abs(d)
            dd = d.to(acc.dtype)
            l1 += ad.to(acc.dtype)
            sq += dd * dd
            mx = tl.maximum(mx, ad)
            changed += (d != 0).to(tl.int32)
            nan += isn.to(tl.int32)
            bad += (fin == 0).to(tl.int32)
            if HAS_R:
                ta = a - r
                tb = b - r
                c = ((ta > 0) & (tb < 0)) | ((ta < 0) & (tb > 0))
                conflicts += c.to(tl.int32)
                csq += tl.where(c, dd * dd, 0.0)
                ta64 = ta.to(acc.dtype)
                tb64 = tb.to(acc.dtype)
                dot += ta64 * tb64
                na2 += ta64 * ta64
                nb2 += tb64 * tb64
        row = out_ptr + pid * 11
        tl.store(row + 0, tl.sum(l1, 0).to(tl.float64))
        tl.store(row + 1, tl.sum(sq, 0).to(tl.float64))
        tl.store(row + 2, tl.max(mx, 0).to(tl.float64))
        tl.store(row + 3, tl.sum(changed, 0).to(tl.float64))
        tl.store(row + 4, tl.sum(conflicts, 0).to(tl.float64))
        tl.store(row + 5, tl.sum(csq, 0).to(tl.float64))
        tl.store(row + 6, tl.sum(dot, 0).to(tl.float64))
        tl.store(row + 7, tl.sum(na2, 0).to(tl.float64))
        tl.store(row + 8, tl.sum(nb2, 0).to(tl.float64))
        nan_total = tl.sum(nan, 0)
        tl.store(row + 9, nan_total.to(tl.float64))
        tl.store(row + 10, (tl.sum(bad, 0) - nan_total).to(tl.float64))


def kernel_name() -> str:
    """The reduction the CUDA path will use: ``triton`` or ``eager``."""
    if HAVE_TRITON and os.environ.get("HARNESS_DIFF_KERNEL", "triton") == "triton":
        return "triton"
    return "eager"


def max_programs() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count * 4


def grid_for(n: int) -> int:
    if kernel_name() != "triton":
        return 1
    return max(1, min(triton.cdiv(n, BLOCK), max_programs()))


def fused_stats(a: torch.Tensor, b: torch.Tensor, r: Optional[torch.Tensor], out: torch.Tensor,
                acc64: bool = True) -> None:
    """Write partial raw statistics of flat CUDA tensors into ``out`` (``grid_for(n)`` rows)."""
    n = a.numel()
    if kernel_name() != "triton":
        out[0] = chunk_stats(a, b, r)
        return
    grid = grid_for(n)
    _diff_kernel[(grid,)](a, b, r if r is not None else a, out, n, HAS_R=r is not None,
                          ACC64=acc64, BLOCK=BLOCK, num_warps=NUM_WARPS)


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


def cuda_backend(jobs: list, bar, acc64: bool = True) -> dict[str, np.ndarray]:
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
        step = max(1, SLOT_BYTES // itemsize)
        for e0 in range(0, job.numel, step):
            plan.append((k, e0, min(job.numel, e0 + step)))
    dense = [k for k, j in enumerate(jobs) if not j.trivially_zero and j.numel and not _is_plain(j)]
    rows_of = [grid_for(e1 - e0) for _, e0, e1 in plan]
    dense_rows = [grid_for(jobs[k].numel) for k in dense]
    partials = torch.zeros((sum(rows_of) + sum(dense_rows) + 1, NRAW), dtype=torch.float64, device=dev)

    reader = _Reader(min(16, os.cpu_count() or 4))
    pinned = [[torch.empty(SLOT_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(nsides)]
              for _ in range(min(NSLOTS, max(1, len(plan))))] if plan else []
    devbuf = [[torch.empty(SLOT_BYTES, dtype=torch.uint8, device=dev) for _ in range(nsides)]
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
                            partials[row:row + rows_of[i]], acc64)
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
                fused_stats(xs[0], xs[1], xs[2] if has_r else None, partials[row:row + nrows], acc64)
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
