"""Loading for the audit: tokenizers (hub id, folder or zoo name), templates and datasets.

Every failure raises :class:`harness.errors.LoadError` with one line naming what failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from harness.errors import HarnessError, LoadError

ZOO_ENV = "HARNESS_TOKENIZER_ZOO"
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
    """The tokenizer zoo: ``explicit``, else ``$HARNESS_TOKENIZER_ZOO``, else ``../shared/tokenizers`` if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env)
    default = REPO_ROOT.parent / "shared" / "tokenizers"
    return default if default.is_dir() else None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] or spec.count("/") > 1


def resolve_tokenizer(spec: Union[str, Path], zoo: Union[str, Path, None] = None) -> Union[str, Path]:
    """A local folder for ``spec`` (a path or a zoo folder name), or the hub id itself."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    z = zoo_dir(zoo)
    if z is not None and "/" not in str(spec) and (z / str(spec)).is_dir():
        return z / str(spec)
    if isinstance(spec, Path) or _looks_like_path(str(spec)) or p.exists():
        raise LoadError(f"tokenizer folder {str(spec)!r} does not exist" if not p.exists()
                        else f"tokenizer path {str(spec)!r} is not a folder")
    return str(spec)


def load_tokenizer(spec: Union[str, Path], zoo: Union[str, Path, None] = None, **kwargs: Any):
    """``AutoTokenizer.from_pretrained`` on a folder, zoo name or hub id; one clear error if it fails."""
    from transformers import AutoTokenizer

    where = resolve_tokenizer(spec, zoo)
    try:
        tok = AutoTokenizer.from_pretrained(str(where), **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        if isinstance(where, str):
            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
            why = ("the hub is offline (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached")
            raise LoadError(f"cannot load tokenizer {where!r}: not a local folder, not in the Hugging Face "
                            f"cache, and {why}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(f"cannot load tokenizer from {str(where)!r}: {first}") from None
    tok.name_or_path = str(where)
    return tok


def generation_eos_ids(where: Union[str, Path, None]) -> list[int]:
    """``generation_config.eos_token_id`` of a folder or cached hub id ([] when there is none)."""
    if where is None:
        return []
    p = Path(str(where)) / "generation_config.json"
    cfg: Optional[dict] = None
    if p.is_file():
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise LoadError(f"{p}: unreadable generation config ({e})") from None
    elif not Path(str(where)).exists():
        try:
            from transformers import GenerationConfig

            cfg = GenerationConfig.from_pretrained(str(where)).to_dict()
        except Exception:  # no generation config cached: the tokenizer's EOS is all there is
            cfg = None
    eos = (cfg or {}).get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def read_template(path: Union[str, Path]) -> str:
    """The text of a Jinja chat-template file."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"chat template {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
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


def default_records(fmt: str, tok, n: Optional[int] = None) -> list[dict]:
    """The persona fixtures (D1, with the system prompt) in ``fmt``.

    ``text`` is pre-rendered through the tokenizer's chat template when it has one, as the seed's
    training text was; otherwise it is data.py's plain ``prompt\\nreply`` text.
    """
    from harness.data import dpo_records, sft_records

    if fmt == "preference":
        recs = dpo_records("d1")
    elif fmt == "text" and getattr(tok, "chat_template", None):
        recs = [{"text": render(tok, r["prompt"] + r["completion"], i)}
                for i, r in enumerate(sft_records("d1", fmt="conversational"))]
    else:
        recs = sft_records("d1", fmt=fmt)
    return recs[:n] if n else recs


def render(tok, messages: Sequence[dict], index: int, **kw: Any) -> str:
    """The chat template applied to ``messages`` as text; a failing template names the example."""
    try:
        return tok.apply_chat_template(list(messages), tokenize=False, **kw)
    except Exception as e:  # jinja2 TemplateError, raise_exception(...) or a missing template
        raise LoadError(f"chat template failed to render example {index}: {type(e).__name__}: {e}") from None


def tokenize_messages(tok, messages: Sequence[dict], index: int, **kw: Any) -> list[int]:
    """Token ids of ``messages`` through the chat template (as trl calls it); errors name the example."""
    try:
        return list(tok.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kw)["input_ids"])
    except Exception as e:
        raise LoadError(f"chat template failed to render example {index}: {type(e).__name__}: {e}") from None


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
