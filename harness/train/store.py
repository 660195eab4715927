"""The fixture cache: content-addressed node folders, written to a temp folder and renamed in.

Layout under the fixtures dir (default ``.fixtures/`` in the project; the CLIs and the pytest plugin
pass ``--fixtures-dir`` or ``$HARNESS_FIXTURES_DIR``)::

    nodes/<node>-<key16>/   model.safetensors, config.json, tokenizer files, adapter/,
                            log.json, curves.png, meta.json (written last: the completion mark)
    tmp/<node>-<key16>-<pid>-<rand>.<host>/   a node being built; removed when its process is gone (``host``: a
                            tag of the machine that builds it, whose pid it is, for a fixtures dir shared by hosts)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from harness import versions

META_FILE = "meta.json"


def default_fixtures_dir(configured: str | Path | None = None) -> Path:
    """``configured`` (a run's fixtures dir, e.g. ``RunConfig.fixtures_dir``) or ``.fixtures/`` in the project
    (:func:`harness.models.default_cache_root`, which the conversion cache shares)."""
    from harness.models import default_cache_root

    return Path(configured) if configured else default_cache_root()


def cache_key(inputs: Any) -> str:
    """sha256 of the canonical JSON of ``inputs`` (sorted keys)."""
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def library_versions(quantized: bool = False) -> dict[str, str]:
    """Versions of the libraries a trained node depends on (part of its cache key)."""
    names = ["torch", "transformers", "trl", "peft", "tokenizers"] + (["bitsandbytes"] if quantized else [])
    return versions.library_versions(names)


def host_tag() -> str:
    """A short tag of this machine in temp folder names: a pid means something only on the host that made it."""
    return hashlib.sha256(platform.node().encode("utf-8")).hexdigest()[:8]


def _suffix() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}.{host_tag()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """One fixtures dir."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_fixtures_dir()

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def node_dir(self, name: str, key: str) -> Path:
        return self.nodes_dir / f"{name}-{key[:16]}"

    def is_complete(self, name: str, key: str) -> bool:
        return (self.node_dir(name, key) / META_FILE).is_file()

    def new_tmp(self, name: str, key: str) -> Path:
        """A fresh temp folder for building node ``name``."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = self.tmp_dir / f"{name}-{key[:16]}-{_suffix()}"
        path.mkdir()
        return path

    def commit(self, tmp: Path, name: str, key: str) -> Path:
        """Rename a finished temp folder into place (atomic on one filesystem)."""
        final = self.node_dir(name, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a --rebuild, or another process finished first
            trash = self.tmp_dir / f"old-{final.name}-{_suffix()}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return final

    def clean_stale_tmp(self) -> list[Path]:
        """Remove temp folders whose building process is gone (an interrupted build). A folder made on another
        host (a fixtures dir shared by a Ray cluster) is left alone: its pid means nothing here."""
        removed = []
        if not self.tmp_dir.is_dir():
            return removed
        here = host_tag()
        for p in self.tmp_dir.iterdir():
            parts = p.name.rsplit("-", 2)
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
            if len(parts) == 3 and "." in parts[2] and parts[2].rsplit(".", 1)[1] != here:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    @contextlib.contextmanager
    def lock(self, name: str, key: str) -> Iterator[None]:
        """An exclusive per-node lock: a second builder of the same node waits, then finds it done."""
        from harness.atomic import file_lock

        with file_lock(self.root / "locks" / f"{name}-{key[:16]}.lock"):
            yield

    def entries(self) -> Iterator[tuple[Path, dict]]:
        """Every complete node folder with its metadata."""
        if not self.nodes_dir.is_dir():
            return
        for p in sorted(self.nodes_dir.iterdir()):
            meta = p / META_FILE
            if meta.is_file():
                yield p, json.loads(meta.read_text(encoding="utf-8"))

    def clean(self, tmp_only: bool = False) -> int:
        """Delete temp folders (and, unless ``tmp_only``, every node); returns how many went."""
        n = 0
        targets = [self.tmp_dir] if tmp_only else [self.tmp_dir, self.nodes_dir, self.root / "locks"]
        for d in targets:
            if d.is_dir():
                for p in d.iterdir():
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
        return n
