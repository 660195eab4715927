"""A lazy index over a checkpoint: tensor name -> (shard, offset, dtype, shape).

A checkpoint is a Hugging Face model folder (sharded with ``model.safetensors.index.json``,
or one or more ``*.safetensors``), a bare ``.safetensors`` file, a PEFT LoRA adapter folder
(its base plus the adapter; see :mod:`harness.diff.lora`; the dispatch is :mod:`harness.diff.loading`), or a hub id resolved through
huggingface_hub's cache. Only headers are read up front. Each shard is checked with
safetensors' ``safe_open``; tensors are then read with ``pread`` in row blocks, one shard per
checkpoint open at a time, only when asked for.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from harness.errors import LoadError

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}
FLOAT_DTYPES = {"BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
INDEX_FILE = "model.safetensors.index.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard file, the byte range in it, dtype and shape."""

    name: str
    path: str
    start: int  # absolute byte offset in the file
    nbytes: int
    dtype: str
    shape: tuple

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: str) -> dict[str, TensorInfo]:
    """Validate one shard with ``safe_open`` and return its tensors' locations."""
    try:
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types
        raise LoadError(f"corrupt or truncated safetensors file {path}: {exc}") from None
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        (hlen,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(hlen))
    base = 8 + hlen
    out: dict[str, TensorInfo] = {}
    for name in names:
        meta = header[name]
        s, e = meta["data_offsets"]
        if base + e > size:
            raise LoadError(f"truncated safetensors file {path}: tensor {name!r} ends at byte "
                            f"{base + e} but the file has {size} bytes")
        out[name] = TensorInfo(name, path, base + s, e - s, meta["dtype"], tuple(meta["shape"]))
    return out


class Checkpoint:
    """A safetensors checkpoint (one or more shards) read lazily, one shard mapped at a time."""

    is_adapter = False

    def __init__(self, label: str, shard_paths: list[str], weight_map: Optional[dict] = None) -> None:
        self.label = label
        self.tensors: dict[str, TensorInfo] = {}
        for p in shard_paths:
            for name, info in read_header(p).items():
                self.tensors[name] = info
        if weight_map:
            missing = sorted(n for n in weight_map if n not in self.tensors)
            if missing:
                raise LoadError(f"{label}: the index lists tensors its shards lack: "
                                f"{_short_list(missing)}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fds: set[int] = set()

    # -- index ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Tensor names, in shard order (the order that reads each shard once)."""
        return sorted(self.tensors, key=lambda n: (self.tensors[n].path, self.tensors[n].start))

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def shape(self, name: str) -> tuple:
        return self.tensors[name].shape

    # -- reading -------------------------------------------------------------------------
    def _fd(self, path: str) -> int:
        local = self._local
        if getattr(local, "path", None) != path:  # one shard open at a time (per reading thread)
            with self._lock:
                if getattr(local, "fd", None) is not None:
                    self._fds.discard(local.fd)
                    os.close(local.fd)
                local.fd, local.path = os.open(path, os.O_RDONLY), path
                self._fds.add(local.fd)
        return local.fd

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        """Read ``len(out)`` bytes of tensor ``name`` from byte ``offset`` of its data."""
        info = self.tensors[name]
        fd = self._fd(info.path)
        pread_full(fd, out, info.start + offset, info.path)

    def rows(self, name: str, r0: int, r1: int, buf: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``r0:r1`` of tensor ``name`` (as a 2-D ``(rows, -1)`` matrix), stored dtype.

        Read with ``pread`` into ``buf`` (a uint8 CPU tensor, reused across calls) or a new
        buffer: memory stays bounded by the rows asked for, not by the shard.
        """
        info = self.tensors[name]
        dtype = torch_dtype(info, self.label)
        nrows = info.shape[0] if info.shape else 1
        rowbytes = info.nbytes // nrows if nrows else 0
        n = (r1 - r0) * rowbytes
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=torch.uint8)
        view = buf[:n]
        self.read_into(name, r0 * rowbytes, memoryview(view.numpy()))
        return view.view(dtype).reshape(r1 - r0, -1)

    def raw(self, name: str) -> torch.Tensor:
        """The whole stored tensor, read into a new CPU tensor (stored dtype and shape)."""
        info = self.tensors[name]
        nrows = info.shape[0] if info.shape else 1
        return self.rows(name, 0, nrows).reshape(info.shape)

    def close(self) -> None:
        """Close every descriptor this checkpoint opened (call when no thread is reading)."""
        with self._lock:
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Checkpoint({self.label!r}, {len(self.tensors)} tensors)"


def torch_dtype(info: TensorInfo, label: str) -> torch.dtype:
    dtype = DTYPES.get(info.dtype)
    if dtype is None:
        raise LoadError(f"{label}: tensor {info.name!r} has unsupported dtype {info.dtype}")
    return dtype


def pread_full(fd: int, out: memoryview, offset: int, path: str) -> None:
    """``pread`` exactly ``len(out)`` bytes at ``offset``; a short file is a truncated shard."""
    done, total = 0, len(out)
    while done < total:
        n = os.preadv(fd, [out[done:]], offset + done)
        if n <= 0:
            raise LoadError(f"truncated safetensors file {path}: read stopped at byte {offset + done}")
        done += n


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _folder_shards(folder: Path) -> tuple[list[str], Optional[dict]]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise LoadError(f"unreadable shard index {index}: {exc!r}") from None
        shards = sorted(set(weight_map.values()))
        for s in shards:
            if not (folder / s).is_file():
                raise LoadError(f"shard {folder / s} named in {index} does not exist")
        return [str(folder / s) for s in shards], weight_map
    single = folder / "model.safetensors"
    if single.is_file():
        return [str(single)], None
    shards = sorted(str(p) for p in folder.glob("*.safetensors"))
    if shards:
        return shards, None
    others = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".gguf"})
    hint = f"; found {', '.join(others)} (convert to safetensors)" if others else ""
    raise LoadError(f"no safetensors weights in folder {folder}{hint}")


def _resolve_hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=spec, allow_patterns=["*.safetensors", "*.json"],
                                      cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoadError(f"no such file or folder {spec!r}, and it could not be resolved as a "
                        f"hub id (offline and not cached, or unreachable): {reason}") from None


def resolve_path(spec: "str | os.PathLike") -> Path:
    """The local path of ``spec``: a file or folder, or a hub id resolved through the local cache."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if not path.exists():
        if HUB_ID.match(text) and "/" in text and not text.startswith("."):
            return _resolve_hub(text)
        raise LoadError(f"no such file or folder: {text}")
    return path


def open_checkpoint(path: Path) -> "Checkpoint":
    """Open a ``.safetensors`` file or a model folder (single or sharded) lazily."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise LoadError(f"{path} is not a .safetensors file")
        return Checkpoint(str(path), [str(path)])
    shards, weight_map = _folder_shards(path)
    return Checkpoint(str(path), shards, weight_map)
