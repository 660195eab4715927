"""A plan's base, resolved: the plan-side adapter of :func:`harness.models.resolve`.

``base.model`` (or ``--base``) goes through the one resolver (hub id, model folder, GGUF file converted
into ``<fixtures>/bases/gguf-<sha16>-v1/``). Here is what only a plan has: the ``base.offline`` GGUF
a hub id falls back to, the ``base.sha256`` pin (a refusal names the plan file and the field), and the
``chat_template`` / ``stop_tokens`` overlay into ``<fixtures>/bases/overlay-<key16>/`` (weights hard-linked).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from harness.errors import LoadError
from harness.models import INFO_FILE, PinMismatch, Resolved, convert_gguf, expand, find_gguf
from harness.models import resolve as resolve_model

_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


# ---------------------------------------------------------------------------- overlay

def overlay(base_dir: Path, identity: dict, source: Any, store: Any, where: str,
            gguf_dir: Optional[Path] = None) -> tuple[Path, dict]:
    """``base_dir`` with the plan's chat template and stop tokens, as a cached folder (weights hard-linked)."""
    template = None
    if source.chat_template:
        tp = Path(expand(source.chat_template, gguf_dir))
        if not tp.is_file():
            raise LoadError(f"{where}: base.chat_template: {tp} does not exist")
        template = tp.read_text(encoding="utf-8")
    ident = {**identity, "chat_template": hashlib.sha256(template.encode()).hexdigest() if template else None,
             "stop_tokens": list(source.stop_tokens)}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    final = store.root / "bases" / f"overlay-{key}"
    if (final / INFO_FILE).is_file():
        return final, ident
    with store.lock("overlay", key):
        if (final / INFO_FILE).is_file():
            return final, ident
        tmp = store.new_tmp("overlay", key)
        try:
            _overlay_into(base_dir, tmp, template, source.stop_tokens, where)
            _write_json(tmp / INFO_FILE, {"from": str(base_dir), **ident})
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, ident


def _overlay_into(base_dir: Path, out: Path, template: str | None, stops: tuple[str, ...], where: str) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    for f in base_dir.iterdir():
        if f.is_file() and any(f.match(p) for p in _WEIGHT_FILES):
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
        elif f.is_file() and f.name != INFO_FILE:
            shutil.copy2(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(str(out))
    if stops:
        ids = []
        for t in stops:
            i = tok.convert_tokens_to_ids(t)
            if i is None or i == tok.unk_token_id or tok.convert_ids_to_tokens(i) != t:
                raise LoadError(f"{where}: base.stop_tokens: {t!r} is not a token of {base_dir.name}'s tokenizer")
            ids.append(int(i))
        try:
            gen = GenerationConfig.from_pretrained(str(base_dir))
        except OSError:
            gen = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
        gen.eos_token_id = ids if len(ids) > 1 else ids[0]
        gen.save_pretrained(str(out))


def _write_json(path: Path, obj: Any) -> None:
    from harness.atomic import write_json

    write_json(path, obj, indent=1)


# ---------------------------------------------------------------------------- resolution

def resolve(plan: Any, store: Any, progress: bool = True, gguf_dir: Optional[Path] = None) -> tuple[Path, dict]:
    """(local folder, identity) of a plan's non-tiny base; the identity enters every node's key.

    A hub id that is neither reachable nor cached falls back to the plan's ``base.offline`` GGUF
    (said on stderr and recorded in the identity), and only for the hub id the plan names.
    ``gguf_dir`` is where ``$HARNESS_GGUF_DIR`` in the plan points.
    """
    if gguf_dir is None:  # the plan's (the edges set it from HARNESS_GGUF_DIR), else the documented default
        from harness.config import DEFAULT_GGUF_DIR

        gguf_dir = (getattr(plan, "gguf_dir", None) or DEFAULT_GGUF_DIR).expanduser()
    where = f"{plan.path or plan.name}: base.model"
    src = plan.source
    pin = src.sha256 if not src.offline else None
    text = expand(plan.base, gguf_dir)
    may_fall_back = bool(src.offline and src.offline_for == plan.base) and find_gguf(text) is None \
        and not Path(text).expanduser().is_dir() and not text.startswith(("/", ".", "~"))
    try:
        try:
            base: Resolved = resolve_model(plan.base, store.root, gguf_dir=gguf_dir, sha256=pin, where=where,
                                           progress=progress)
            folder, ident = base.folder, base.identity
        except LoadError as e:
            if not may_fall_back:
                raise
            off = Path(expand(src.offline, gguf_dir))
            print(f"base: {plan.base} is not available ({e}); using the plan's offline source {off}", file=sys.stderr)
            folder, ident = convert_gguf(off, store.root, sha256=src.sha256, progress=progress)
            ident = {**ident, "offline_for": plan.base}
    except PinMismatch as e:
        raise LoadError(f"{e} (the pin is base.sha256 in {plan.path or plan.name}); to build on this file, set "
                        f"base.sha256 = \"{e.digest}\" there or delete that line") from None
    if src.chat_template or src.stop_tokens:
        folder, ident = overlay(folder, ident, src, store, f"{plan.path or plan.name}", gguf_dir)
    return folder, ident
