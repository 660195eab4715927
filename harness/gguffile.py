"""GGUF files on disk: where ``.ci/fetch-gguf`` puts them, and their content hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

GGUF_ENV = "HARNESS_GGUF_DIR"
DEFAULT_GGUF_DIR = "~/.cache/harness/gguf"


def gguf_dir() -> Path:
    """``$HARNESS_GGUF_DIR``, else ``~/.cache/harness/gguf`` (where ``.ci/fetch-gguf`` puts the files)."""
    return Path(os.environ.get(GGUF_ENV) or DEFAULT_GGUF_DIR).expanduser()


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
