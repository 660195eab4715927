"""The conversion cache: a GGUF file dequantized once into a bf16 safetensors folder, keyed by its content.

``<cache_root>/bases/gguf-<sha16>-v<CONVERT_VERSION>/`` holds config, weights, tokenizer, chat template
and generation config; ``base_info.json`` is written last and marks it complete. The key is the file's
sha256, never its name: two files of one name never share a folder, and a renamed file keeps its own.
The converted tokenizer's BOS, EOS and PAD are checked against the GGUF's metadata before anything is
kept. ``cache_root`` is the fixtures dir (training, the judge server and the audit share one cache);
its ``locks/`` and ``tmp/`` are the fixture store's, so concurrent builders wait on one lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from harness.errors import LoadError
from harness.models.gguffile import check_complete, check_special_tokens, gguf_tokens, sha256_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_cache_root() -> Path:
    """The documented fixtures dir when none is given: ``.fixtures/`` in the project."""
    return PROJECT_ROOT / ".fixtures"

#: Bump when the conversion changes what it writes; part of the converted folder's key.
CONVERT_VERSION = 1
INFO_FILE = "base_info.json"  # written last: its presence marks a converted folder complete


class PinMismatch(LoadError):
    """A GGUF file whose sha256 is not the pinned one (``digest`` and ``pinned`` say both)."""

    def __init__(self, path: Path, digest: str, pinned: str) -> None:
        super().__init__(f"{path}: sha256 {digest} does not match the pinned {pinned}")
        self.path, self.digest, self.pinned = path, digest, pinned


def converted_dir(cache_root: Path, digest: str) -> Path:
    """Where the conversion of the GGUF file with sha256 ``digest`` lies (complete or not)."""
    return Path(cache_root) / "bases" / f"gguf-{digest[:16]}-v{CONVERT_VERSION}"


def convert_gguf(path: Path, cache_root: Path | None, *, sha256: str | None = None,
                 progress: bool = True) -> tuple[Path, dict]:
    """The bf16 safetensors folder of GGUF ``path`` under ``cache_root`` (converted once), and its identity.
    ``cache_root`` None is the project's default fixture cache (the edges pass ``HARNESS_FIXTURES_DIR``'s).

    A missing, truncated or unreadable file, a sha256 other than ``sha256`` (:class:`PinMismatch`) and a
    tokenizer that converts wrongly each raise one :class:`LoadError` naming the file; nothing is kept then.
    """
    path = Path(path)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    if not path.is_file():
        raise LoadError(f"{path}: no such GGUF file")
    check_complete(path)
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256:
        raise PinMismatch(path, digest, sha256)
    key = f"{digest[:16]}-v{CONVERT_VERSION}"
    final = converted_dir(cache_root, digest)
    identity = {"kind": "gguf", "sha256": digest, "file": path.name, "convert_version": CONVERT_VERSION}
    if (final / INFO_FILE).is_file():
        return final, identity
    with _lock(Path(cache_root), key):
        if (final / INFO_FILE).is_file():
            return final, identity
        tmp = _new_tmp(Path(cache_root), key)
        try:
            info = _convert_into(path, tmp, progress)
            info.update(identity)
            from harness.atomic import write_json

            write_json(tmp / INFO_FILE, info, indent=1)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a half-written folder from an older layout: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, identity


@contextlib.contextmanager
def _lock(root: Path, key: str) -> Iterator[None]:
    """The fixture store's lock file for this conversion (``locks/gguf-<key16>.lock``)."""
    from harness.atomic import file_lock

    with file_lock(root / "locks" / f"gguf-{key[:16]}.lock"):
        yield


def _new_tmp(root: Path, key: str) -> Path:
    """A fresh temp folder named as the fixture store names them (its stale-folder sweep reads the pid)."""
    d = root / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"gguf-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


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
    if not can_spawn():
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


def can_spawn() -> bool:
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
