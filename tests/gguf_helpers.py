"""Small GGUF files written with the ``gguf`` package, for the tests of every folder that reads GGUF files
(tests/conftest.py's folder is on sys.path, so ``from gguf_helpers import ...`` works from any of them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import from_env

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def small_gguf(path: Path, n: int = 1 << 16) -> Path:
    """A complete GGUF file with a llama header and one float32 tensor of ``n`` values (no usable model)."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("small")
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32).reshape(-1, 64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cut_gguf(folder: Path, name: str = "cut.gguf", keep: int = 4096) -> tuple[Path, Path]:
    """``(whole, cut)``: a complete small GGUF and a copy of its first ``keep`` bytes named ``name`` in ``folder``
    (an interrupted download)."""
    whole = small_gguf(folder / f"whole-{name}", n=256 * 64)
    cut = folder / name
    cut.write_bytes(whole.read_bytes()[:keep])
    return whole, cut


def real_gguf(name: str, fetch: str) -> Path:
    """A fetched base in the run configuration's GGUF folder, else a skip that says how to fetch it."""
    f = from_env().gguf_folder / name
    if not f.is_file():
        pytest.skip(f"{f} is absent: run .ci/fetch-gguf {fetch} (HARNESS_GGUF_DIR names the folder)")
    return f
