"""Tokenizers of GGUF files for the audit: the conversion cache's folder (:mod:`harness.models`).

The tokenizer is the one the conversion made and checked against the GGUF's BOS/EOS/PAD, in
``<cache_root>/bases/gguf-<sha16>-v1/`` (shared with training and the judge server); the
generation EOS ids are the GGUF's own ``eos_token_id`` and ``eot_token_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from harness.errors import LoadError


def gguf_tokenizer_folder(path: Path, cache_root: Optional[Path] = None) -> Path:
    """The converted folder of the GGUF file ``path`` (converted on first use), whose tokenizer the audit loads."""
    from harness.models import convert_gguf

    path = Path(path)
    if not path.is_file():
        raise LoadError(f"GGUF file {str(path)!r} does not exist")
    folder, _ = convert_gguf(path, cache_root, progress=False)
    return folder


def gguf_eos_ids(path: Path) -> list[int]:
    """What generation stops on, from the GGUF's own metadata: its EOS and end-of-turn ids."""
    from harness.models import eos_ids

    return eos_ids(Path(path))
