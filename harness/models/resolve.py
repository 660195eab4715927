"""One resolver for a base model: a hub id (``id@revision``), a model folder, or a GGUF file.

:func:`resolve` answers a :class:`Resolved`: a local folder transformers loads (for a GGUF file, its
folder in the conversion cache), the identity that enters cache keys, and the tokenizer and model
loaded from that folder. Where GGUF files lie (``gguf_dir``) and where conversions are cached
(``cache_root``) are arguments; the command line and the pytest plugin take them from
:func:`harness.config.from_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.config import DEFAULT_GGUF_DIR
from harness.errors import LoadError
from harness.models.convert import convert_gguf
from harness.models.gguffile import is_gguf

GGUF_DIR_TOKENS = ("${HARNESS_GGUF_DIR}", "$HARNESS_GGUF_DIR")  # how a plan names the GGUF folder


def expand(spec: str, gguf_dir: Optional[Path] = None) -> str:
    """``$HARNESS_GGUF_DIR`` replaced by ``gguf_dir`` (default ``~/.cache/harness/gguf``), and ``~`` expanded."""
    folder = Path(gguf_dir or DEFAULT_GGUF_DIR).expanduser()
    for token in GGUF_DIR_TOKENS:
        if token in spec:
            spec = spec.replace(token, str(folder))
    return os.path.expanduser(os.path.expandvars(spec)) if spec.startswith(("~", "$")) else spec


def find_gguf(spec: str) -> Path | None:
    """The GGUF file ``spec`` names, else None: a ``.gguf`` path, a file that starts with the GGUF magic
    (a link into a hub cache, whose target has no suffix), or a folder holding exactly one ``.gguf``."""
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return p
    if p.is_file() and is_gguf(p):
        return p
    if p.is_dir() and not (p / "config.json").is_file():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise LoadError(f"{p}: holds {len(found)} .gguf files ({', '.join(f.name for f in found)}); name one")
        return found[0] if found else None
    return None


@dataclass(frozen=True)
class Resolved:
    """A base model on local disk: ``folder`` loads with transformers; ``identity`` enters cache keys."""

    folder: Path
    identity: dict = field(hash=False)
    gguf: Optional[Path] = None  # the GGUF file ``folder`` was converted from

    def tokenizer(self, **kwargs: Any) -> Any:
        """The tokenizer (for a GGUF file: the one converted and checked against its metadata)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.folder), **kwargs)

    def model(self, **kwargs: Any) -> Any:
        """The causal language model (for a GGUF file: its dequantized bf16 weights)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(self.folder), **kwargs)


def resolve(spec: str, cache_root: Optional[Path] = None, *, gguf_dir: Optional[Path] = None,
            sha256: Optional[str] = None, where: Optional[str] = None, progress: bool = True) -> Resolved:
    """The local form of ``spec``: a GGUF file (converted once under ``cache_root``), a model folder, or a hub
    id (downloaded or found in the hub's cache). ``sha256`` pins a GGUF file; ``where`` prefixes errors."""
    where = where or "model"
    text = expand(spec, gguf_dir)
    gg = find_gguf(text)
    if gg is not None:
        folder, ident = convert_gguf(gg, cache_root, sha256=sha256, progress=progress)
        return Resolved(folder, ident, gg)
    p = Path(text).expanduser()
    if p.is_dir():
        return local_folder(p, where)
    if text.startswith(("/", ".", "~")):
        raise LoadError(f"{where}: {text} does not exist")
    return hub(text, where)


def local_folder(p: Path, where: str) -> Resolved:
    """A model folder used in place; its files' names, sizes and mtimes are its identity."""
    if not (p / "config.json").is_file():
        raise LoadError(f"{where}: {p} has no config.json (and no .gguf file)")
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir() if f.is_file())
    return Resolved(p.resolve(), {"kind": "path", "path": str(p.resolve()), "files": files})


def hub(spec: str, where: str) -> Resolved:
    """A hub id (``id@revision``) as a snapshot folder: downloaded, or from the hub's cache when offline."""
    repo, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo, revision=revision or None,
                                  local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1",
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available here"
        raise LoadError(f"{where}: {spec!r} is neither a local folder nor a model found on the hub "
                        f"or in its local cache ({type(e).__name__})") from None
    return Resolved(Path(local), {"kind": "hub", "id": repo, "revision": revision or None,
                                  "snapshot": Path(local).name})
