"""GPU discovery and the threads of one builder process: device lists, the GPUs this process sees, pinning a
process to one GPU, and the set-up of a build worker (threads, its log, dying with its parent)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError

#: Intra-op threads of CPU training. One, whatever the machine's load or cores: a float sum split over another
#: number of threads rounds differently, and one node key must give the same weights (the tiny base
#: pretrained with 2 threads differed from 1 thread's by up to 0.17, and moved C6 sft_d0 from 0.97 to 0.89).
CPU_TRAIN_THREADS = 1


def parse_devices(spec: str | Sequence[str] | None, where: str = "--devices") -> list[str] | None:
    """``"0,1"`` (or a list) → ``["0", "1"]``; None or "" → None. Empty or repeated entries are errors."""
    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if items == [""]:
        return None
    if any(not s for s in items):
        raise HarnessError(f"{where} {spec!r}: an empty device name; give ids separated by commas, e.g. 0,1")
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise HarnessError(f"{where} {spec!r}: device {dup[0]!r} is listed twice")
    return items


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` ids (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible else []
    n = torch.cuda.device_count()
    return ids[:n] if ids else [str(i) for i in range(n)]


def pin(slot_id: str) -> None:
    """Pin this process (before CUDA starts in it) to the GPU ``slot_id``; "" (a CPU slot) pins nothing."""
    if slot_id:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot_id


def choose_threads(jobs: int = 1) -> None:
    """Threads of a builder: on the CPU :data:`CPU_TRAIN_THREADS`; on CUDA, concurrent workers get an equal share
    of the cores (8 workers with a thread pool of all 16 cores each oversubscribed the H200 host: a
    launch-bound step went from 0.34 s alone to 0.6 s)."""
    import torch

    if torch.cuda.is_available():
        if jobs > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
        return
    torch.set_num_threads(CPU_TRAIN_THREADS)


def worker_init(slot_id: str, jobs: int, log_path: str | Path | None = None) -> None:
    """A build worker's start: pinned to ``slot_id``, dies with its parent (a SIGKILLed build leaves no
    orphans), writes its output to ``log_path`` when given, and shares the cores among ``jobs`` workers."""
    pin(slot_id)
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if log_path:
        fd = os.open(str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    choose_threads(jobs)


def worker_info(slot: str | None) -> dict[str, str | int | None]:
    """Where this process trains: its ``slot``, the GPUs it sees and its torch threads (in each node's meta.json)."""
    import torch

    return {"slot": slot, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_threads": torch.get_num_threads()}
