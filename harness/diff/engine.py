"""``compare``: stream two checkpoints (and a reference) tensor by tensor into a DiffReport."""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.diff.loading import load_checkpoint
from harness.diff.names import LAYER_RE, NUMBERED_RE, layer_of, module_of  # noqa: F401 - re-exported
from harness.diff.settings import DiffSettings
from harness.diff.stats import NRAW, chunk_stats, combine_raw
from harness.errors import HarnessError

CHUNK_ELEMS = 1 << 18  # elements per CPU chunk: fits in L2, big enough to amortise op overhead


def _warn_unknown_blocks(names: Iterable[str]) -> None:
    odd = sorted(n for n in names if layer_of(n) is None and NUMBERED_RE.search(n))
    if odd:
        shown = ", ".join(odd[:5]) + (f" (and {len(odd) - 5} more)" if len(odd) > 5 else "")
        warnings.warn(f"unrecognised block naming, counted under 'other': {shown}", stacklevel=3)


def _check_same_tensors(ckpts: dict) -> list[str]:
    """The common tensor names in ``a``'s shard order; raise listing one-sided tensors."""
    sets = {k: set(c.tensors) for k, c in ckpts.items()}
    union = set().union(*sets.values())
    problems = []
    for k, c in ckpts.items():
        missing = sorted(union - sets[k])
        if missing:
            shown = ", ".join(missing[:12]) + (f" (and {len(missing) - 12} more)" if len(missing) > 12 else "")
            problems.append(f"{len(missing)} tensor(s) missing from {k} ({c.label}): {shown}")
    if problems:
        raise HarnessError("tensor present on one side only: " + "; ".join(problems))
    names = ckpts["a"].names()
    for name in names:
        shapes = {k: tuple(c.shape(name)) for k, c in ckpts.items()}
        if len(set(shapes.values())) > 1:
            desc = ", ".join(f"{shapes[k]} in {k} ({ckpts[k].label})" for k in shapes)
            raise HarnessError(f"shape mismatch for tensor {name!r}: {desc}")
    return names


def _source_key(ckpt, name: str):
    """Where a side's stored tensor comes from, so identical bases can cancel exactly."""
    if ckpt.is_adapter and ckpt.replaced(name):
        return None
    info = ckpt.tensors[name]
    return (os.path.realpath(info.path), info.start)


def _delta(ckpt, name: str):
    return ckpt.delta(name) if ckpt.is_adapter else None


class TensorJob:
    """One tensor of the comparison: its sides' stored views and LoRA deltas, lazily."""

    def __init__(self, name: str, sides: Sequence) -> None:
        self.name = name
        self.sides = sides
        self.numel = int(np.prod(sides[0].shape(name), dtype=np.int64))
        keys = [_source_key(s, name) for s in sides]
        # All sides store the same base tensor: the differences are the LoRA deltas exactly.
        self.shared_base = keys[0] is not None and all(k == keys[0] for k in keys)
        self.deltas = [_delta(s, name) for s in sides]

    @property
    def trivially_zero(self) -> bool:
        return self.shared_base and all(d is None for d in self.deltas)

    def shape2d(self) -> tuple[int, int]:
        return self.rows_cols()

    def rows_cols(self) -> tuple[int, int]:
        shape = self.sides[0].shape(self.name)
        rows = shape[0] if len(shape) >= 1 else 1
        return rows, (self.numel // rows if rows else 0)


def job_raw_torch(job: TensorJob, device: "str | torch.device" = "cpu", chunk: int = CHUNK_ELEMS,
                  bufs: Optional[list] = None, rows: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Raw statistics of one tensor, block of rows by block, with eager torch on ``device``.

    Each side's rows are read from disk in the stored dtype, upcast to fp32, and the side's
    LoRA delta rows (if any) added; when every side stores the same base tensor it cancels and
    only the deltas are materialised.
    """
    if job.trivially_zero or job.numel == 0:
        return np.zeros(NRAW)
    nrows, cols = job.rows_cols()
    lo, hi = rows if rows is not None else (0, nrows)
    deltas = [d.to(device) if d is not None else None for d in job.deltas]
    bufs = bufs if bufs is not None else [None] * len(job.sides)
    step = max(1, chunk // max(cols, 1))
    parts = []
    for r0 in range(lo, hi, step):
        r1 = min(hi, r0 + step)
        xs = []
        for i, (side, delta) in enumerate(zip(job.sides, deltas)):
            if job.shared_base:
                x = torch.zeros((r1 - r0, cols), dtype=torch.float32, device=device)
            else:
                x = side.rows(job.name, r0, r1, bufs[i]).to(device).float()
            if delta is not None:
                x = x + delta.rows(r0, r1)
            xs.append(x.reshape(-1))
        parts.append(chunk_stats(*xs))
    return combine_raw(torch.stack(parts).cpu().numpy())


def _job_chunks(job: TensorJob, chunk: int = CHUNK_ELEMS) -> list[tuple[int, int]]:
    rows, cols = job.rows_cols()
    step = max(1, chunk // max(cols, 1))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def cpu_backend(jobs: list[TensorJob], bar, workers: Optional[int] = None,
                settings: DiffSettings = DiffSettings()) -> dict[str, np.ndarray]:
    """Blocks of rows spread over a pool of threads, each running single-threaded torch ops.

    One intra-op thread per worker: OpenMP's barriers collapse when the cores are shared (a
    busy CI machine), while independent chunks on independent threads degrade gracefully.
    ``workers`` (else ``settings.threads``, else torch's thread count) sets the pool's size.
    """
    workers = workers or settings.threads or torch.get_num_threads()
    local = threading.local()

    def work(job: TensorJob, r0: int, r1: int) -> np.ndarray:
        if not hasattr(local, "bufs"):
            local.bufs = [torch.empty(CHUNK_ELEMS * 4, dtype=torch.uint8) for _ in range(3)]
        return job_raw_torch(job, "cpu", bufs=local.bufs, rows=(r0, r1))

    out = {j.name: np.zeros(NRAW) for j in jobs}
    tasks = []
    for job in jobs:
        if job.trivially_zero or job.numel == 0:
            bar.update(1)
            continue
        tasks += [(job, r0, r1) for r0, r1 in _job_chunks(job)]
    left = {j.name: len(_job_chunks(j)) for j in jobs}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            window = 4 * workers  # bounded read-ahead: memory stays at a few chunks per worker
            futs = [pool.submit(work, *t) for t in tasks[:window]]
            for i, task in enumerate(tasks):
                raw = futs[i].result()
                futs[i] = None
                if i + window < len(tasks):
                    futs.append(pool.submit(work, *tasks[i + window]))
                name = task[0].name
                out[name] = combine_raw([out[name], raw])
                left[name] -= 1
                if left[name] == 0:
                    bar.update(1)
    finally:
        torch.set_num_threads(threads)
    return out


def pick_device(device: str) -> str:
    """The diff's device (:func:`harness.device.resolve_device`)."""
    from harness.device import resolve_device

    return resolve_device(device)


def compare(a, b, base=None, *, device: str = "auto", progress: bool = True,
            adapter_base=None, backend: Optional[Callable] = None,
            settings: DiffSettings = DiffSettings()):
    """Diff checkpoint ``b`` against ``a`` (optionally with reference ``base``): a DiffReport.

    ``a``, ``b`` and ``base`` are paths (model folder, ``.safetensors`` file, PEFT adapter
    folder) or hub ids. Tensors are streamed one at a time; arithmetic is fp32 after
    upcasting, accumulation float64. ``settings`` tunes the engines (threads, kernel, buffers);
    ``backend(jobs, bar)``, when given, replaces them.
    """
    from harness.diff.report import DiffReport

    dev = pick_device(device)
    ckpts = {"a": load_checkpoint(a, adapter_base), "b": load_checkpoint(b, adapter_base)}
    if base is not None:
        ckpts["base"] = load_checkpoint(base, adapter_base)
    names = _check_same_tensors(ckpts)
    _warn_unknown_blocks(names)
    sides = list(ckpts.values())
    jobs = [TensorJob(n, sides) for n in names]
    if backend is None:
        if dev == "cuda":
            from harness.diff.cuda import cuda_backend

            backend = partial(cuda_backend, settings=settings)
        else:
            backend = partial(cpu_backend, settings=settings)
    try:
        with tqdm(total=len(jobs), desc="diff", unit="tensor", disable=not progress) as bar:
            raws = backend(jobs, bar)
    finally:
        for c in sides:
            c.close()
    meta = {"a": ckpts["a"].label, "b": ckpts["b"].label,
            "base": ckpts["base"].label if base is not None else None, "device": dev,
            "tensors": len(jobs)}
    return DiffReport.build(raws, {j.name: j.numel for j in jobs}, base is not None, meta)
