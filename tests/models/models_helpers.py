"""Copies of a real GGUF file with rewritten metadata (what a badly converted upload looks like), for the
models tests; the fetched bases and small files are in tests/gguf_helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

GEMMA = "gemma-3-270m-q4_k_m.gguf"


def rewritten(src: Path, dst: Path, tokens: Optional[dict[int, str]] = None, name: Optional[str] = None) -> Path:
    """A copy of GGUF ``src`` at ``dst`` with vocabulary entries (id -> text) or ``general.name`` replaced;
    the tensors are copied as they are (the ``gguf`` package's own new-metadata writer)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), arch=reader.fields["general.architecture"].contents(),
                             endianess=reader.endianess)
    align = reader.fields.get("general.alignment")
    if align is not None:
        writer.data_alignment = align.contents()
    new = {}
    if tokens:
        vocab = list(reader.fields["tokenizer.ggml.tokens"].contents())
        for i, text in tokens.items():
            vocab[i] = text
        new["tokenizer.ggml.tokens"] = MetadataDetails(gguf.GGUFValueType.ARRAY, vocab,
                                                       sub_type=gguf.GGUFValueType.STRING)
    if name:
        new["general.name"] = MetadataDetails(gguf.GGUFValueType.STRING, name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    copy_with_new_metadata(reader, writer, new, [])
    return dst


def vocab_entry(path: Path, i: int) -> str:
    import gguf

    return gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents(i)


def blob_copy(src: Path, dst: Path) -> Path:
    """``src`` at ``dst`` (a hard link where the filesystem allows, else a copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst
