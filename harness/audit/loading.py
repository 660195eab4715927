"""Loading for the audit: tokenizers (hub id, folder or zoo name), templates and datasets.

Every failure raises :class:`harness.errors.LoadError` with one line naming what failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from harness.errors import HarnessError, LoadError

FORMATS: tuple[str, ...] = ("conversational", "messages", "prompt-completion", "text", "preference")
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Fields a user JSONL row must hold, per format (message lists are checked separately).
REQUIRED: dict[str, dict[str, type]] = {
    "conversational": {"prompt": list, "completion": list},
    "messages": {"messages": list},
    "prompt-completion": {"prompt": str, "completion": str},
    "text": {"text": str},
    "preference": {"prompt": object, "chosen": object, "rejected": object},
}


def zoo_dir(explicit: Union[str, Path, None] = None) -> Optional[Path]:
    """The tokenizer zoo: ``explicit`` (the edges pass ``HARNESS_TOKENIZER_ZOO``'s), else
    ``../shared/tokenizers`` if present."""
    if explicit:
        return Path(explicit)
    default = REPO_ROOT.parent / "shared" / "tokenizers"
    return default if default.is_dir() else None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] or spec.count("/") > 1


def resolve_tokenizer(spec: Union[str, Path], zoo: Union[str, Path, None] = None) -> Union[str, Path]:
    """A local folder (or ``.gguf`` file) for ``spec`` (a path or a zoo folder name), or the hub id itself.

    A name without ``/`` that is close to a zoo folder name is taken for a typo and answered at
    once with the folder it resembles, before any hub lookup.
    """
    from harness.models.gguffile import is_gguf

    p = Path(spec).expanduser()
    if p.is_dir() or (p.is_file() and (p.suffix == ".gguf" or is_gguf(p))):
        return p
    z = zoo_dir(zoo)
    if z is not None and "/" not in str(spec) and (z / str(spec)).is_dir():
        return z / str(spec)
    if isinstance(spec, Path) or _looks_like_path(str(spec)) or p.exists():
        raise LoadError(f"tokenizer folder {str(spec)!r} does not exist" if not p.exists()
                        else f"tokenizer path {str(spec)!r} is not a folder")
    if z is not None and "/" not in str(spec) and z.is_dir():
        import difflib

        names = sorted(d.name for d in z.iterdir() if d.is_dir())
        close = difflib.get_close_matches(str(spec), names, n=1, cutoff=0.75)
        if close:
            raise LoadError(f"no tokenizer {str(spec)!r} in the zoo {str(z)!r}; did you mean {close[0]}? "
                            f"(known: {', '.join(names)})")
    return str(spec)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _hub_reachable(timeout: float = 5.0) -> bool:
    """One connection attempt to the hub endpoint (no retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(hub_id: str, **kwargs: Any):
    """A hub tokenizer: from the local cache first; else one reachability check, then the hub."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(hub_id, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if hub_offline():
        why = "the hub is offline (HF_HUB_OFFLINE=1)"
    elif not _hub_reachable():
        why = "the hub could not be reached (one attempt; set HF_HUB_OFFLINE=1 to work from local folders)"
    else:
        try:
            return AutoTokenizer.from_pretrained(hub_id, **kwargs)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LoadError(f"cannot load tokenizer {hub_id!r} from the hub: {first}") from None
    raise LoadError(f"cannot load tokenizer {hub_id!r}: not a local folder, not in the Hugging Face cache, and {why}")


def load_tokenizer(spec: Union[str, Path], zoo: Union[str, Path, None] = None, *,
                   cache_root: Union[str, Path, None] = None, **kwargs: Any):
    """``AutoTokenizer.from_pretrained`` on a folder, zoo name, ``.gguf`` file or hub id; one clear error if it
    fails. A GGUF file's tokenizer comes from its folder in the conversion cache under ``cache_root``."""
    from transformers import AutoTokenizer

    where = resolve_tokenizer(spec, zoo)
    if isinstance(where, str):
        tok = _from_hub(where, **kwargs)
    else:
        if where.is_file():  # a .gguf file: its tokenizer, converted once and cached as a folder
            from harness.audit.gguf import gguf_tokenizer_folder

            where = gguf_tokenizer_folder(where, Path(cache_root) if cache_root else None)
        _check_folder(where)
        kwargs.setdefault("trust_remote_code", False)  # never the interactive [y/N] prompt
        try:
            tok = AutoTokenizer.from_pretrained(str(where), **kwargs)
        except Exception as e:  # tokenizers' Rust errors are plain Exceptions: one line for any of them
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "trust_remote_code" in str(e) and not kwargs.get("trust_remote_code"):
                first = "it ships its own tokenizer code; pass --trust-remote-code to run it"
            raise LoadError(f"cannot load tokenizer from {str(where)!r}: {first}") from None
    tok.name_or_path = str(spec if isinstance(where, str) else where)
    return tok


_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                "sentencepiece.bpe.model", "tekken.json", "vocab.model")


def _check_folder(folder: Path) -> None:
    """A folder without any vocabulary file makes transformers build an empty tokenizer: refuse it."""
    if not any((folder / f).is_file() for f in _VOCAB_FILES) and not any(folder.glob("*.tiktoken")):
        raise LoadError(f"tokenizer folder {str(folder)!r} has no vocabulary file (none of "
                        f"{', '.join(_VOCAB_FILES)}); only {', '.join(sorted(f.name for f in folder.iterdir())) or 'nothing'}")


def generation_eos_ids(where: Union[str, Path, None]) -> list[int]:
    """``generation_config.eos_token_id`` of a folder or cached hub id, a GGUF file's EOS and end-of-turn ids
    ([] when there is none)."""
    if where is None:
        return []
    if Path(str(where)).is_file():
        from harness.models.gguffile import is_gguf

        if str(where).endswith(".gguf") or is_gguf(Path(str(where))):
            from harness.audit.gguf import gguf_eos_ids

            return gguf_eos_ids(Path(str(where)))
    p = Path(str(where)) / "generation_config.json"
    cfg: Optional[dict] = None
    if p.is_file():
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LoadError(f"{p}: unreadable generation config ({e})") from None
    elif not Path(str(where)).exists():
        try:
            from transformers import GenerationConfig

            cfg = GenerationConfig.from_pretrained(str(where), local_files_only=True).to_dict()
        except Exception:  # no generation config cached: the tokenizer's EOS is all there is
            cfg = None
    if cfg is not None and not isinstance(cfg, dict):
        raise LoadError(f"{p}: unreadable generation config (expected a JSON object)")
    eos = (cfg or {}).get("eos_token_id")
    if eos is None:
        return []
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ids):
        raise LoadError(f"{p}: field 'eos_token_id' must be a token id or a list of token ids, not {eos!r}")
    return [int(e) for e in ids]


def read_template(path: Union[str, Path]) -> str:
    """The text of a Jinja chat-template file."""
    p = Path(path)
    if p.is_dir():
        raise LoadError(f"chat template {str(p)!r} is a folder, not a Jinja file")
    if not p.is_file():
        raise LoadError(f"chat template {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LoadError(f"chat template {str(p)!r} is unreadable ({e})") from None
    if not text.strip():
        raise LoadError(f"chat template {str(p)!r} is empty")
    return text


def check_tokenizer(tok, name: str) -> None:
    """The audit needs an EOS token; say so naming the tokenizer."""
    if tok.eos_token is None or tok.eos_token_id is None:
        raise LoadError(f"tokenizer {name!r} defines no eos_token: nothing marks where a reply ends "
                        "(set eos_token in tokenizer_config.json)")


def load_records(path: Union[str, Path], fmt: str) -> list[dict]:
    """A user JSONL file in ``fmt``; a bad row raises LoadError naming the file and line."""
    from harness.data import load_jsonl

    if Path(path).is_dir():
        raise LoadError(f"data path {str(path)!r} is a folder, not a JSONL file")
    rows = load_jsonl(path, REQUIRED[fmt], id_field=None)
    text = Path(path).read_text(encoding="utf-8").splitlines()
    line_numbers = [n for n, line in enumerate(text, start=1) if line.strip()]
    for lineno, row in zip(line_numbers, rows):
        for key in ("prompt", "completion", "messages", "chosen", "rejected"):
            val = row.get(key)
            if isinstance(val, list):
                for m in val:
                    if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                        raise LoadError(f"{path}:{lineno}: field {key!r} must be a list of "
                                        "{role, content} messages")
    return rows


def default_records(fmt: str, tok, n: Optional[int] = None, folder: Union[str, Path, None] = None) -> list[dict]:
    """The persona fixtures (D1, with the system prompt; of ``folder``, default the packaged data) in ``fmt``.

    ``text`` is pre-rendered through the tokenizer's chat template when it has one, as the study's
    training text was; otherwise it is data.py's plain ``prompt\\nreply`` text.
    """
    from harness.data import dpo_records, sft_records

    if fmt == "preference":
        recs = dpo_records("d1", folder=folder)
    elif fmt == "text" and getattr(tok, "chat_template", None):
        recs = [{"text": render(tok, r["prompt"] + r["completion"], i)}
                for i, r in enumerate(sft_records("d1", fmt="conversational", folder=folder))]
    else:
        recs = sft_records("d1", fmt=fmt, folder=folder)
    return recs[:n] if n else recs


def render(tok, messages: Sequence[dict], index: int, **kw: Any) -> str:
    """The chat template applied to ``messages`` as text; a failing template names the example."""
    try:
        return tok.apply_chat_template(list(messages), tokenize=False, **kw)
    except Exception as e:  # jinja2 TemplateError, raise_exception(...) or a missing template
        raise LoadError(f"chat template failed to render example {index}: {type(e).__name__}: {e}"
                        f"{system_hint(messages)}") from None


def system_hint(messages: Sequence[dict]) -> str:
    """A hint for templates that reject the system role (Mistral v0.2, Gemma), when there is one."""
    if any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        return ("; the template may reject the system role: --fold-system (fold_system=True) folds the "
                "system prompt into the first user turn, as users of such models do")
    return ""


def tokenize_messages(tok, messages: Sequence[dict], index: int, **kw: Any) -> list[int]:
    """Token ids of ``messages`` through the chat template (as trl calls it); errors name the example."""
    try:
        return list(tok.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kw)["input_ids"])
    except Exception as e:
        raise LoadError(f"chat template failed to render example {index}: {type(e).__name__}: {e}"
                        f"{system_hint(messages)}") from None


def detect_format(rec: dict) -> str:
    """The format of one record, from its keys."""
    if "chosen" in rec and "rejected" in rec:
        return "preference"
    if "messages" in rec:
        return "messages"
    if "prompt" in rec and "completion" in rec:
        return "conversational" if isinstance(rec["prompt"], list) else "prompt-completion"
    if "text" in rec:
        return "text"
    raise HarnessError(f"record with keys {sorted(rec)} is in no known format ({', '.join(FORMATS)})")
