"""Tokenizers of GGUF files: converted once by transformers and cached as a tokenizer folder.

``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` rebuilds the tokenizer from the GGUF
metadata, which takes tens of seconds for a 262k vocabulary (Gemma 3). The result is saved with
``save_pretrained`` under ``$HARNESS_GGUF_TOKENIZER_CACHE`` (default ``~/.cache/harness/gguf-tokenizers``)
in a folder named by the file's sha256, with a ``generation_config.json`` holding the GGUF's EOS id.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from harness.errors import LoadError
from harness.gguffile import sha256_file

CACHE_ENV = "HARNESS_GGUF_TOKENIZER_CACHE"


def _eos_ids(path: Path) -> list[int]:
    """``tokenizer.ggml.eos_token_id`` (and ``eot_token_id``) of a GGUF file, read from its metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        field = reader.fields.get(key)
        if field is not None:
            value = int(field.parts[field.data[0]][0])
            if value not in out:
                out.append(value)
    return out


def gguf_tokenizer_folder(path: Path) -> Path:
    """The cached tokenizer folder of the GGUF file ``path`` (built on first use)."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"GGUF file {str(path)!r} does not exist")
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness" / "gguf-tokenizers")
    dest = root / f"{path.stem}-{sha256_file(path)[:16]}"
    if (dest / "tokenizer_config.json").is_file():
        return dest
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        eos = _eos_ids(path)
    except Exception as e:  # gguf's and transformers' parse errors have no common base
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(f"cannot read the tokenizer of GGUF file {str(path)!r}: {first}") from None
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=root))
    try:
        tok.save_pretrained(str(tmp))
        (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}) + "\n", encoding="utf-8")
        try:
            tmp.rename(dest)
        except OSError:  # another process built it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
