"""Nothing half-written: every file the harness writes goes to a temporary name and is renamed."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` on success, removed on failure.

    ``suffix`` lets writers that pick a format from the name (matplotlib) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = None, default: Any = None) -> Path:
    """Write ``obj`` as UTF-8 JSON (non-ASCII kept) to ``path`` atomically; ``default`` as in :func:`json.dumps`
    (e.g. ``str`` for paths and other values JSON lacks)."""
    return write_bytes(path, json.dumps(obj, ensure_ascii=False, indent=indent, default=default)
                       + ("\n" if indent else ""))


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created with its folder): a second holder waits until the first is done.
    The fixture store locks a node, and the conversion cache a conversion, this way."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
