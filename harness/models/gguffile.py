"""GGUF files on disk: recognising one, its content hash, whether it is complete, and its tokenizer metadata.

The one reader of GGUF metadata in the harness: the conversion (:mod:`harness.models.convert`),
the audit and the judge server all ask here.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import struct
from pathlib import Path
from typing import Any

from harness.errors import LoadError

MAGIC = b"GGUF"
#: ``tokenizer.ggml.*`` key of each special-token role the conversion checks.
GGUF_KEY = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id"}


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic (any name: a hub cache blob has no suffix)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


# ---------------------------------------------------------------------------- completeness

# Sizes in bytes of GGUF scalar value types (gguf.GGUFValueType); 8 is a string, 9 an array.
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def check_complete(path: Path) -> None:
    """Refuse a GGUF file shorter than its own header says (an interrupted download), in one line naming it.

    Walks the header, the metadata and the tensor table (lengths only, no parsing of the vocabulary) and
    compares the end of the last tensor with the file's size: a fraction of a second, where the reader
    fails with a numpy reshape message after parsing everything.
    """
    from gguf.constants import GGML_QUANT_SIZES

    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise LoadError(f"{path}: incomplete file: {size} bytes, shorter than a GGUF header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != MAGIC:
            raise LoadError(f"{path}: not a readable GGUF file (it does not start with {MAGIC!r})")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version not in (2, 3):  # a big-endian file, or not a GGUF at all: the reader says which
            if struct.unpack_from(">I", m, 4)[0] in (2, 3):
                return
            raise LoadError(f"{path}: not a readable GGUF file (version {version})")
        pos, alignment = 24, 32
        try:
            for _ in range(n_kv):
                key, pos = _string(m, pos)
                (vtype,), pos = struct.unpack_from("<I", m, pos), pos + 4
                if key == "general.alignment" and vtype == 4:
                    alignment = struct.unpack_from("<I", m, pos)[0]
                pos = _skip_value(m, pos, vtype)
            ends = [0]
            for _ in range(n_tensors):
                _, pos = _string(m, pos)
                (n_dims,), pos = struct.unpack_from("<I", m, pos), pos + 4
                dims, pos = struct.unpack_from(f"<{n_dims}Q", m, pos), pos + 8 * n_dims
                (ttype, offset), pos = struct.unpack_from("<IQ", m, pos), pos + 12
                block, type_size = GGML_QUANT_SIZES[ttype]
                n = 1
                for d in dims:
                    n *= d
                ends.append(offset + n // block * type_size)
        except (struct.error, IndexError, ValueError):
            raise LoadError(f"{path}: incomplete file: {size} bytes end inside its header "
                            "(an interrupted download? fetch it again)") from None
        except KeyError as e:
            raise LoadError(f"{path}: not a readable GGUF file (unknown tensor type {e})") from None
    data_start = -(-pos // alignment) * alignment
    end = data_start + max(ends)
    if size < end:
        raise LoadError(f"{path}: incomplete file: {size} bytes, but its tensors end at byte {end} "
                        "(an interrupted download? fetch it again)")


def _string(m: Any, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", m, pos)
    if pos + 8 + n > len(m):
        raise IndexError(pos)
    return bytes(m[pos + 8: pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n


def _skip_value(m: Any, pos: int, vtype: int) -> int:
    if vtype in _SCALAR:
        return pos + _SCALAR[vtype]
    if vtype == _STRING:
        (n,) = struct.unpack_from("<Q", m, pos)
        return pos + 8 + n
    if vtype == _ARRAY:
        itype, count = struct.unpack_from("<IQ", m, pos)
        pos += 12
        if itype in _SCALAR:
            return pos + _SCALAR[itype] * count
        for _ in range(count):
            pos = _skip_value(m, pos, itype)
            if pos > len(m):
                raise IndexError(pos)
        return pos
    raise ValueError(f"value type {vtype}")


# ---------------------------------------------------------------------------- tokenizer metadata

def gguf_tokens(path: Path) -> dict[str, Any]:
    """The GGUF's architecture and its BOS/EOS/PAD (and end-of-turn) token ids, from the file's own metadata."""
    path = Path(path)
    st = path.stat()
    return dict(_gguf_tokens(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, str(path)))


@functools.lru_cache(maxsize=8)
def _gguf_tokens(resolved: str, size: int, mtime: int, inode: int, shown: str) -> dict[str, Any]:
    """Reading the metadata parses the whole vocabulary (seconds): once per file version."""
    check_complete(Path(shown))
    try:
        import gguf

        reader = gguf.GGUFReader(resolved)
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is not a usable GGUF
        raise LoadError(f"{shown}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    fields = reader.fields

    def get(key: str) -> Any:
        f = fields.get(key)
        return None if f is None else f.contents()

    return {"architecture": get("general.architecture"), "bos": get("tokenizer.ggml.bos_token_id"),
            "eos": get("tokenizer.ggml.eos_token_id"), "pad": get("tokenizer.ggml.padding_token_id"),
            "eot": get("tokenizer.ggml.eot_token_id"),
            "has_chat_template": get("tokenizer.chat_template") is not None}


def eos_ids(path: Path) -> list[int]:
    """``tokenizer.ggml.eos_token_id`` and ``eot_token_id`` of a GGUF file (what generation stops on)."""
    meta = gguf_tokens(path)
    out: list[int] = []
    for value in (meta["eos"], meta["eot"]):
        if value is not None and int(value) not in out:
            out.append(int(value))
    return out


def check_special_tokens(tok: Any, meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The converted tokenizer's BOS/EOS/PAD ids must equal the GGUF's; one error names both on a mismatch."""
    out = {}
    for role in ("bos", "eos", "pad"):
        want = meta.get(role)
        got = getattr(tok, f"{role}_token_id")
        got_text = getattr(tok, f"{role}_token")
        if want is not None and got != want:
            want_text = tok.convert_ids_to_tokens(int(want)) if 0 <= int(want) < len(tok) else "?"
            raise LoadError(f"{path}: the converted tokenizer's {role}_token is {got_text!r} (id {got}) but the "
                            f"GGUF's tokenizer.ggml.{GGUF_KEY[role]} is {want} ({want_text!r}); this transformers "
                            "version converts the tokenizer wrongly")
        out[role] = {"id": got, "token": got_text}
    return out
