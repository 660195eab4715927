"""The run configuration: every documented ``HARNESS_*`` variable, read once, at the edge.

The pytest plugin and the ``python -m harness`` commands call :func:`from_env` once and hand the
values down as arguments; no module below reads ``HARNESS_*`` itself (``tests/test_layers.py``
checks that). A malformed value raises :class:`~harness.errors.HarnessError` naming the variable.
docs/options.md describes each variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Optional

from harness.errors import HarnessError

DEFAULT_GGUF_DIR = Path("~/.cache/harness/gguf")
EXECUTORS = ("embedded", "ray")  # who runs a build's nodes: the harness's own workers, or Ray tasks


@dataclass(frozen=True)
class RunConfig:
    """The environment's defaults for one run. ``None`` means "not set: use the documented default"."""

    # where things lie
    fixtures_dir: Optional[Path] = None  # HARNESS_FIXTURES_DIR
    findings_dir: Optional[Path] = None  # HARNESS_FINDINGS_DIR
    data_dir: Optional[Path] = None  # HARNESS_DATA_DIR
    gguf_dir: Optional[Path] = None  # HARNESS_GGUF_DIR
    tokenizer_zoo: Optional[Path] = None  # HARNESS_TOKENIZER_ZOO
    # the claims session
    plan: Optional[str] = None  # HARNESS_PLAN
    base: Optional[str] = None  # HARNESS_BASE
    variant: Optional[str] = None  # HARNESS_VARIANT
    claims_dir: Optional[Path] = None  # HARNESS_CLAIMS_DIR
    update_snapshots: bool = False  # HARNESS_UPDATE_SNAPSHOTS=1
    # devices and workers
    devices: Optional[str] = None  # HARNESS_DEVICES, e.g. "0,1"
    executor: Optional[str] = None  # HARNESS_EXECUTOR: embedded (default) or ray
    ray_address: Optional[str] = None  # HARNESS_RAY_ADDRESS: the Ray cluster to join (default: local)
    legacy_steps: bool = False  # HARNESS_LEGACY_STEPS=1: the Trainer's own per-step loop (the speed benchmark's "before")
    legacy_graphs: bool = False  # HARNESS_LEGACY_GRAPHS=1: the claims session builds its graphs one after another
    legacy_prefetch: bool = False  # HARNESS_LEGACY_PREFETCH=1: the claims' generations and weight diffs after the build, in the main process
    # output evaluation
    judge_serve: Optional[str] = None  # HARNESS_JUDGE_SERVE
    judge_model: Optional[str] = None  # HARNESS_JUDGE_MODEL
    judge_limit: int = 0  # HARNESS_JUDGE_LIMIT
    judge_max_tokens: Optional[int] = None  # HARNESS_JUDGE_MAX_TOKENS
    judge_concurrency: Optional[int] = None  # HARNESS_JUDGE_CONCURRENCY
    bertscore_model: Optional[str] = None  # HARNESS_BERTSCORE_MODEL
    bertscore_layers: Optional[int] = None  # HARNESS_BERTSCORE_LAYERS
    # the weight-diff engines' tuning
    diff_threads: Optional[int] = None  # HARNESS_DIFF_THREADS
    diff_kernel: Optional[str] = None  # HARNESS_DIFF_KERNEL
    diff_block: Optional[int] = None  # HARNESS_DIFF_BLOCK
    diff_warps: Optional[int] = None  # HARNESS_DIFF_WARPS
    diff_programs_per_sm: Optional[int] = None  # HARNESS_DIFF_PROGRAMS_PER_SM
    diff_k: Optional[int] = None  # HARNESS_DIFF_K
    diff_slot_mb: Optional[int] = None  # HARNESS_DIFF_SLOT_MB
    diff_slots: Optional[int] = None  # HARNESS_DIFF_SLOTS
    diff_readers: Optional[int] = None  # HARNESS_DIFF_READERS

    @property
    def gguf_folder(self) -> Path:
        """Where the real bases' GGUF files lie (``HARNESS_GGUF_DIR``, default ``~/.cache/harness/gguf``)."""
        return (self.gguf_dir or DEFAULT_GGUF_DIR).expanduser()


def variable(field_name: str) -> str:
    """``judge_limit`` -> ``HARNESS_JUDGE_LIMIT``."""
    return f"HARNESS_{field_name.upper()}"


def from_env(environ: Optional[Mapping[str, str]] = None) -> RunConfig:
    """Read every ``HARNESS_*`` variable of ``environ`` (default: the process environment) into a RunConfig."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(RunConfig):
        raw = env.get(variable(f.name))
        if raw is None or raw == "":
            continue
        kind = str(f.type)
        if f.name == "executor" and raw not in EXECUTORS:
            raise HarnessError(f"{variable(f.name)}={raw!r}: not one of {', '.join(EXECUTORS)}")
        if f.name in ("update_snapshots", "legacy_steps", "legacy_graphs", "legacy_prefetch"):
            values[f.name] = raw == "1"
        elif "int" in kind:
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise HarnessError(f"{variable(f.name)}={raw!r}: not an integer") from None
        elif "Path" in kind:
            values[f.name] = Path(raw).expanduser()
        else:
            values[f.name] = raw
    return RunConfig(**values)
