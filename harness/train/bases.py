"""Bases from anywhere: a hub id (``id@revision``), a local folder, a ``.gguf`` file or a folder holding one.

A GGUF file is loaded through transformers' own gguf support, dequantized once and saved into the
fixture cache as a bf16 safetensors folder (config, tokenizer, chat template, generation config),
keyed by the file's sha256: ``<fixtures>/bases/gguf-<sha16>/``. The converted tokenizer's BOS, EOS
and PAD are checked against the GGUF's own metadata first. A plan's ``chat_template`` and
``stop_tokens`` overlay any base into ``<fixtures>/bases/overlay-<key16>/`` (weights hard-linked).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from harness.errors import LoadError
from harness.gguffile import GGUF_ENV, gguf_dir, sha256_file

#: Bump when the conversion changes what it writes; part of the converted folder's key.
CONVERT_VERSION = 1
INFO_FILE = "base_info.json"  # written last: its presence marks a converted folder complete
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


def expand(spec: str) -> str:
    """``$HARNESS_GGUF_DIR`` (set or not) and ``~`` expanded; other text unchanged."""
    for token in ("${" + GGUF_ENV + "}", "$" + GGUF_ENV):
        if token in spec:
            spec = spec.replace(token, str(gguf_dir()))
    return os.path.expanduser(os.path.expandvars(spec)) if spec.startswith(("~", "$")) else spec


def find_gguf(spec: str) -> Path | None:
    """The GGUF file ``spec`` names (a ``.gguf`` path, or a folder holding exactly one), else None."""
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return p
    if p.is_dir() and not (p / "config.json").is_file():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise LoadError(f"{p}: holds {len(found)} .gguf files ({', '.join(f.name for f in found)}); name one")
        return found[0] if found else None
    return None


# ---------------------------------------------------------------------------- GGUF metadata

def gguf_tokens(path: Path) -> dict[str, Any]:
    """The GGUF's architecture and its BOS/EOS/PAD token ids (from the file's own metadata)."""
    st = Path(path).stat()
    return dict(_gguf_tokens(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _gguf_tokens(path: str, size: int, mtime: int) -> dict[str, Any]:
    """Reading the metadata parses the whole vocabulary (seconds): once per file version."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is not a usable GGUF
        raise LoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    fields = reader.fields

    def get(key: str) -> Any:
        f = fields.get(key)
        return None if f is None else f.contents()

    return {"architecture": get("general.architecture"), "bos": get("tokenizer.ggml.bos_token_id"),
            "eos": get("tokenizer.ggml.eos_token_id"), "pad": get("tokenizer.ggml.padding_token_id"),
            "has_chat_template": get("tokenizer.chat_template") is not None}


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
                            f"GGUF's tokenizer.ggml.{_GGUF_KEY[role]} is {want} ({want_text!r}); this transformers "
                            "version converts the tokenizer wrongly")
        out[role] = {"id": got, "token": got_text}
    return out


_GGUF_KEY = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id"}


# ---------------------------------------------------------------------------- conversion

def convert_gguf(path: Path, store: Any, *, sha256: str | None = None, progress: bool = True) -> tuple[Path, dict]:
    """The bf16 safetensors folder of GGUF ``path`` in the cache (converted once), and its identity."""
    if not path.is_file():
        raise LoadError(f"{path}: no such GGUF file")
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256:
        raise LoadError(f"{path}: sha256 {digest} does not match the pinned {sha256}")
    key = f"{digest[:16]}-v{CONVERT_VERSION}"
    final = store.root / "bases" / f"gguf-{key}"
    identity = {"kind": "gguf", "sha256": digest, "file": path.name, "convert_version": CONVERT_VERSION}
    if (final / INFO_FILE).is_file():
        return final, identity
    with store.lock("gguf", key):
        if (final / INFO_FILE).is_file():
            return final, identity
        tmp = store.new_tmp("gguf", key)
        try:
            info = _convert_into(path, tmp, progress)
            info.update(identity)
            _write_json(tmp / INFO_FILE, info)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a half-written folder from an older layout: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, identity


def _convert_into(path: Path, out: Path, progress: bool) -> dict:
    """Convert in two processes at once: the tokenizer (with its special-token check) in a spawned one, the
    weights here. Each half parses the GGUF's metadata itself (seconds, for a 49k-token vocabulary)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import transformers
    from transformers import GenerationConfig

    if progress:
        print(f"converting {path.name} (GGUF) to a bf16 folder, once", flush=True)
    if not _can_spawn():
        fresh = _convert_weights(path)
        tok = _convert_tokenizer(str(path), str(out))
    else:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            tok_half = pool.submit(_convert_tokenizer, str(path), str(out))
            try:
                fresh = _convert_weights(path)
            finally:
                try:
                    tok = tok_half.result()  # its LoadError first: a wrong tokenizer is the likelier culprit
                except BrokenProcessPool:  # the child died (out of memory?): here, after the weights
                    tok = _convert_tokenizer(str(path), str(out))
    meta = tok["meta"]
    fresh.generation_config = GenerationConfig(bos_token_id=meta["bos"], eos_token_id=meta["eos"],
                                               pad_token_id=meta["pad"])
    fresh.save_pretrained(str(out), safe_serialization=True, max_shard_size="5GB")
    return {"architecture": meta["architecture"], "tokens": tok["tokens"], "transformers": transformers.__version__,
            "has_chat_template": tok["has_chat_template"]}


def _can_spawn() -> bool:
    """Whether a spawned process can start here: it re-runs ``__main__`` from its file, and a script read from
    stdin has none."""
    import sys

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.isfile(main_file)


def _convert_tokenizer(path_s: str, out_s: str) -> dict:
    """The GGUF's tokenizer, checked against the file's own BOS/EOS/PAD and saved into ``out_s``."""
    from transformers import AutoTokenizer

    path = Path(path_s)
    meta = gguf_tokens(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{path}: transformers cannot read its tokenizer ({type(e).__name__}: {e})") from None
    tokens = check_special_tokens(tok, meta, path)
    tok.save_pretrained(out_s)
    return {"meta": meta, "tokens": tokens, "has_chat_template": bool(getattr(tok, "chat_template", None))}


def _convert_weights(path: Path) -> Any:
    """The GGUF's weights, dequantized, as a bf16 model built from its config (a GGUF-loaded model refuses
    ``save_pretrained``). The config is read once and handed to the model load, which would read it again."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, name = str(path.parent), path.name
    kwargs: dict[str, Any] = {"gguf_file": name, "dtype": torch.float32}
    try:
        from transformers import GgufConfig  # transformers >= 5.2x keeps blocks packed unless told

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, config=config, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{path}: transformers cannot load its weights ({type(e).__name__}: {e})") from None
    config = loaded.config
    config.dtype = torch.bfloat16
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise LoadError(f"{path}: the dequantized weights do not fit {type(fresh).__name__} "
                        f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    fresh.tie_weights()
    return fresh


# ---------------------------------------------------------------------------- overlay

def overlay(base_dir: Path, identity: dict, source: Any, store: Any, where: str) -> tuple[Path, dict]:
    """``base_dir`` with the plan's chat template and stop tokens, as a cached folder (weights hard-linked)."""
    template = None
    if source.chat_template:
        tp = Path(expand(source.chat_template))
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

def resolve(plan: Any, store: Any, progress: bool = True) -> tuple[Path, dict]:
    """(local folder, identity) of a plan's non-tiny base; the identity enters every node's key.

    A hub id that is neither reachable nor cached falls back to the plan's ``base.offline`` GGUF
    (said on stderr and recorded in the identity), and only for the hub id the plan names.
    """
    where = f"{plan.path or plan.name}: base.model"
    src = plan.source
    spec = expand(plan.base)
    gg = find_gguf(spec)
    if gg is not None:
        folder, ident = convert_gguf(gg, store, sha256=src.sha256 if not src.offline else None, progress=progress)
    elif Path(spec).expanduser().is_dir():
        folder, ident = _local_folder(Path(spec).expanduser(), where)
    elif spec.startswith(("/", ".", "~")):
        raise LoadError(f"{where}: {spec} does not exist")
    else:
        try:
            folder, ident = _hub(spec, where)
        except LoadError as e:
            if not (src.offline and src.offline_for == plan.base):
                raise
            off = Path(expand(src.offline))
            import sys

            print(f"base: {plan.base} is not available ({e}); using the plan's offline source {off}", file=sys.stderr)
            folder, ident = convert_gguf(off, store, sha256=src.sha256, progress=progress)
            ident = {**ident, "offline_for": plan.base}
    if src.chat_template or src.stop_tokens:
        folder, ident = overlay(folder, ident, src, store, f"{plan.path or plan.name}")
    return folder, ident


def _local_folder(p: Path, where: str) -> tuple[Path, dict]:
    if not (p / "config.json").is_file():
        raise LoadError(f"{where}: {p} has no config.json (and no .gguf file)")
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir() if f.is_file())
    return p.resolve(), {"kind": "path", "path": str(p.resolve()), "files": files}


def _hub(spec: str, where: str) -> tuple[Path, dict]:
    repo, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo, revision=revision or None,
                                  local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1",
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available here"
        raise LoadError(f"{where}: {spec!r} is neither a local folder nor a model found on the hub "
                        f"or in its local cache ({type(e).__name__})") from None
    return Path(local), {"kind": "hub", "id": repo, "revision": revision or None, "snapshot": Path(local).name}
