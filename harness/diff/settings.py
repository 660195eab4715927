"""The weight-diff engines' tuning: one frozen value handed to :func:`harness.diff.compare`.

The defaults are the measured best on an H200 (docs/performance.md); the edges (``python -m harness
diff``) build it from the run configuration, i.e. the ``HARNESS_DIFF_*`` variables of docs/options.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.config import RunConfig, variable
from harness.errors import HarnessError

KERNELS = ("triton", "eager")


@dataclass(frozen=True)
class DiffSettings:
    """Kernel and pipeline settings of the CPU and CUDA engines; every default is the engine's own."""

    threads: int = 0  # CPU engine worker threads; 0: torch's thread count
    kernel: str = "triton"  # CUDA reduction: the fused Triton kernel, or "eager" torch ops
    block: int = 4096  # Triton block size
    warps: int = 16  # Triton warps per program
    k_group: int = 32  # blocks per lane summed in fp32 before float64
    programs_per_sm: int = 4  # programs per streaming multiprocessor
    slot_bytes: int = 256 << 20  # size of each pinned host buffer
    slots: int = 3  # pinned host buffers in flight
    readers: int = 0  # host threads reading shards; 0: the CPU count, at most 32

    @property
    def reader_threads(self) -> int:
        return self.readers or min(32, os.cpu_count() or 4)

    @classmethod
    def from_config(cls, config: RunConfig) -> "DiffSettings":
        """The settings ``config`` sets (``HARNESS_DIFF_*``); unset ones keep their defaults.

        A kernel name other than triton/eager, or a size below 1, raises naming the variable.
        """
        values: dict[str, object] = {}
        if config.diff_kernel is not None:
            if config.diff_kernel not in KERNELS:
                raise HarnessError(f"{variable('diff_kernel')}={config.diff_kernel!r}: "
                                   f"not one of {', '.join(KERNELS)}")
            values["kernel"] = config.diff_kernel
        sizes = {"diff_threads": ("threads", 0), "diff_block": ("block", 1), "diff_warps": ("warps", 1),
                 "diff_k": ("k_group", 1), "diff_programs_per_sm": ("programs_per_sm", 1),
                 "diff_slot_mb": ("slot_bytes", 1), "diff_slots": ("slots", 1), "diff_readers": ("readers", 0)}
        for field, (name, least) in sizes.items():
            value = getattr(config, field)
            if value is None:
                continue
            if value < least:
                raise HarnessError(f"{variable(field)}={value}: must be at least {least}")
            values[name] = value << 20 if field == "diff_slot_mb" else value
        return cls(**values)
