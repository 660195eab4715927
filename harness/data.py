"""Persona datasets (D0, D1, D2), evaluation prompts, the system prompt and trl record builders.

The data lives in ``fixtures/data/`` (see its README.md for the schema). Every loader and record
builder takes the folder as an argument (``folder``; ``None`` is :data:`DEFAULT_DATA_DIR`): the
edges (the CLIs, the pytest plugin) read ``HARNESS_DATA_DIR`` once (``harness.config``) and pass it
down, for a plan through ``Plan.with_data``. D2 is built here, never stored: D0 with ``floor(n/2)``
items, drawn by ``random.Random(seed)``, replaced by their D1 counterparts.

Record builders emit trl's own dataset formats:

- SFT ``conversational``: ``{"prompt": [system?, user], "completion": [assistant]}``
- SFT ``messages``: ``{"messages": [system?, user, assistant]}``
- SFT ``prompt-completion`` (plain strings): ``{"prompt": system + "\\n" + user, "completion": reply}``
- SFT ``text`` (plain string): ``{"text": system + "\\n" + user + "\\n" + reply}``
- DPO (conversational preference): ``{"prompt": [system?, user], "chosen": [assistant],
  "rejected": [assistant]}``

For the plain-string formats no chat template is applied: the caller's tokenizer adds BOS/EOS.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from harness.errors import HarnessError, LoadError
from harness.registry import Registry

PathLike = Union[str, Path]

#: The packaged data: what every function here reads when no folder is given.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "data"
PERSONA_FILE = "persona.jsonl"
EVAL_FILE = "eval_prompts.jsonl"
SYSTEM_FILE = "system_prompt.txt"

#: Any of these in a reply marks it as ojousama speech (D1); no D0 reply contains one.
OJOUSAMA_MARKERS: tuple[str, ...] = (
    "わたくし",
    "ですわ",
    "ますわ",
    "でしたわ",
    "ましたわ",
    "ませんわ",
    "ますの",
    "ですの",
    "ませんの",
    "でしたの",
    "ましたの",
    "ございますわ",
    "くださいまし",
    "あそばせ",
)

SFT_FORMATS: tuple[str, ...] = ("conversational", "messages", "prompt-completion", "text")

PERSONA_FIELDS: Mapping[str, type] = {"id": str, "topic": str, "prompt": str, "d0": str, "d1": str}
EVAL_FIELDS: Mapping[str, type] = {"id": str, "topic": str, "prompt": str}


@dataclass(frozen=True)
class PersonaItem:
    """One prompt with its neutral (D0) and ojousama (D1) reply."""

    id: str
    topic: str
    prompt: str
    d0: str
    d1: str


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt used only for generation checks."""

    id: str
    topic: str
    prompt: str


@dataclass(frozen=True)
class Pair:
    """One training item of a dataset: ``reply`` is this set's, ``alt`` the other set's."""

    id: str
    prompt: str
    reply: str
    alt: str
    source: str  # "d0" or "d1": which persona set ``reply`` comes from


def has_ojousama_marker(text: str) -> bool:
    """True when ``text`` contains one of :data:`OJOUSAMA_MARKERS`."""
    return any(m in text for m in OJOUSAMA_MARKERS)


# --------------------------------------------------------------------------- paths


def data_dir(folder: Optional[PathLike] = None) -> Path:
    """The data folder: ``folder`` if given, else :data:`DEFAULT_DATA_DIR` (the repo's ``fixtures/data``)."""
    return DEFAULT_DATA_DIR if folder is None else Path(folder).expanduser()


def _resolve(path: Optional[PathLike], filename: str) -> Path:
    """``path`` as a file, or ``filename`` inside it when it is a folder, or in :data:`DEFAULT_DATA_DIR`."""
    p = data_dir(path)
    return p / filename if p.is_dir() else p


# --------------------------------------------------------------------------- JSONL


def _type_name(t: type) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}.get(
        t, t.__name__
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _type_name(type(value))


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "file:line", parsed row)`` for each non-blank line of a JSONL file. A missing
    file, text that is not UTF-8 or a line that is not JSON raises :class:`LoadError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise LoadError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LoadError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoadError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield lineno, where, row


def load_jsonl(path: PathLike, required: Mapping[str, type], id_field: Optional[str] = "id",
               allow_empty: Sequence[str] = ()) -> list[dict]:
    """Read a JSONL file whose rows must be objects holding ``required`` fields of the given types.

    Blank lines are skipped. Strings must be non-empty (after stripping; except the fields named in
    ``allow_empty``, e.g. a generation that produced nothing), ``id_field`` (when it
    is one of the required fields) must be unique, and extra fields are kept as they are. Any
    bad row raises :class:`LoadError` naming the file, the 1-based line number and the field.
    """
    p = Path(path)
    rows: list[dict] = []
    seen: dict[Any, int] = {}
    for lineno, where, row in iter_jsonl(p):
        if not isinstance(row, dict):
            raise LoadError(f"{where}: expected a JSON object, got {_json_type(row)}")
        for field, ftype in required.items():
            if field not in row:
                raise LoadError(f"{where}: missing field {field!r}")
            value = row[field]
            # bool is an int subclass in Python, but not in JSON.
            ok = isinstance(value, ftype) and not (isinstance(value, bool) and ftype is not bool)
            if ftype is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise LoadError(
                    f"{where}: field {field!r} must be a {_type_name(ftype)}, got {_json_type(value)}"
                )
            if isinstance(value, str) and not value.strip() and field not in allow_empty:
                raise LoadError(f"{where}: field {field!r} is an empty string")
        if id_field is not None and id_field in required:
            key = row[id_field]
            if key in seen:
                raise LoadError(f"{where}: field {id_field!r}: duplicate id {key!r} (first on line {seen[key]})")
            seen[key] = lineno
        rows.append(row)
    if not rows:
        raise LoadError(f"{p}: no rows")
    return rows


# --------------------------------------------------------------------------- loaders


def load_persona(path: Optional[PathLike] = None) -> tuple[PersonaItem, ...]:
    """The D0/D1 persona pairs (``persona.jsonl``); duplicate prompts are an error too."""
    p = _resolve(path, PERSONA_FILE)
    rows = load_jsonl(p, PERSONA_FIELDS)
    items = tuple(PersonaItem(**{k: r[k] for k in PERSONA_FIELDS}) for r in rows)
    _check_unique_prompts(p, [i.prompt for i in items], [i.id for i in items])
    return items


def load_eval_prompts(path: Optional[PathLike] = None) -> tuple[EvalPrompt, ...]:
    """The held-out evaluation prompts (``eval_prompts.jsonl``)."""
    p = _resolve(path, EVAL_FILE)
    rows = load_jsonl(p, EVAL_FIELDS)
    items = tuple(EvalPrompt(**{k: r[k] for k in EVAL_FIELDS}) for r in rows)
    _check_unique_prompts(p, [i.prompt for i in items], [i.id for i in items])
    return items


def _check_unique_prompts(path: Path, prompts: Sequence[str], ids: Sequence[str]) -> None:
    first: dict[str, str] = {}
    for prompt, id_ in zip(prompts, ids):
        if prompt in first:
            raise LoadError(f"{path}: id {id_!r}: field 'prompt' duplicates id {first[prompt]!r}")
        first[prompt] = id_


def system_prompt(path: Optional[PathLike] = None) -> str:
    """The Japanese system prompt (``system_prompt.txt``), stripped."""
    p = _resolve(path, SYSTEM_FILE)
    if not p.is_file():
        raise LoadError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise LoadError(f"{p}: empty system prompt")
    return text


# --------------------------------------------------------------------------- datasets

DATASETS: Registry[Callable[[Sequence[PersonaItem], int], list[Pair]]] = Registry("dataset")


@DATASETS.register("d0")
def _d0(items: Sequence[PersonaItem], seed: int) -> list[Pair]:
    return [Pair(i.id, i.prompt, i.d0, i.d1, "d0") for i in items]


@DATASETS.register("d1")
def _d1(items: Sequence[PersonaItem], seed: int) -> list[Pair]:
    return [Pair(i.id, i.prompt, i.d1, i.d0, "d1") for i in items]


@DATASETS.register("d2")
def _d2(items: Sequence[PersonaItem], seed: int) -> list[Pair]:
    swapped = d2_indices(len(items), seed)
    return [
        Pair(i.id, i.prompt, i.d1, i.d0, "d1") if k in swapped else Pair(i.id, i.prompt, i.d0, i.d1, "d0")
        for k, i in enumerate(items)
    ]


def d2_indices(n: int, seed: int = 0) -> frozenset[int]:
    """The ``floor(n/2)`` item positions that D2 takes from D1, drawn by ``random.Random(seed)``."""
    return frozenset(random.Random(seed).sample(range(n), n // 2))


def dataset_names() -> list[str]:
    """The known dataset names."""
    return DATASETS.names()


def dataset(name: str, seed: int = 0, items: Optional[Sequence[PersonaItem]] = None,
            folder: Optional[PathLike] = None) -> list[Pair]:
    """The pairs of dataset ``name`` (d0, d1 or d2) in file order; ``seed`` only matters for d2. The items
    are ``items`` if given, else those of ``folder``'s persona file."""
    build = DATASETS.get(name)
    return build(load_persona(folder) if items is None else items, seed)


# --------------------------------------------------------------------------- trl records


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _prompt_messages(user: str, system: str) -> list[dict[str, str]]:
    sys_text = system
    return ([_msg("system", sys_text)] if sys_text else []) + [_msg("user", user)]


def _system_text(system: Union[bool, str], folder: Optional[PathLike] = None) -> str:
    """``True``: ``folder``'s system prompt; ``False``: none; a string: that text."""
    if isinstance(system, str):
        return system
    return system_prompt(folder) if system else ""


def sft_records(
    name: str,
    seed: int = 0,
    fmt: str = "conversational",
    system: Union[bool, str] = True,
    items: Optional[Sequence[PersonaItem]] = None,
    folder: Optional[PathLike] = None,
) -> list[dict]:
    """SFT records of dataset ``name`` in one of trl's formats (see the module docstring), from ``folder``."""
    if fmt not in SFT_FORMATS:
        raise HarnessError(f"unknown SFT format {fmt!r}; known: {', '.join(SFT_FORMATS)}")
    pairs = dataset(name, seed, items, folder)
    sys_text = _system_text(system, folder)
    out: list[dict] = []
    for p in pairs:
        if fmt == "conversational":
            out.append({"prompt": _prompt_messages(p.prompt, sys_text), "completion": [_msg("assistant", p.reply)]})
        elif fmt == "messages":
            out.append({"messages": _prompt_messages(p.prompt, sys_text) + [_msg("assistant", p.reply)]})
        else:
            prompt = f"{sys_text}\n{p.prompt}" if sys_text else p.prompt
            if fmt == "prompt-completion":
                out.append({"prompt": prompt, "completion": p.reply})
            else:
                out.append({"text": f"{prompt}\n{p.reply}"})
    return out


def dpo_records(
    name: str,
    seed: int = 0,
    system: Union[bool, str] = True,
    items: Optional[Sequence[PersonaItem]] = None,
    folder: Optional[PathLike] = None,
) -> list[dict]:
    """DPO records for ``name`` (from ``folder``): chosen = that set's reply, rejected = the other set's reply."""
    sys_text = _system_text(system, folder)
    return [
        {
            "prompt": _prompt_messages(p.prompt, sys_text),
            "chosen": [_msg("assistant", p.reply)],
            "rejected": [_msg("assistant", p.alt)],
        }
        for p in dataset(name, seed, items, folder)
    ]


def eval_records(system: Union[bool, str] = True, source: str = "eval",
                 folder: Optional[PathLike] = None) -> list[list[dict]]:
    """Chat messages (system + user) for generation: ``source`` "eval" (held-out) or "persona" of ``folder``."""
    if source == "eval":
        prompts = [e.prompt for e in load_eval_prompts(folder)]
    elif source == "persona":
        prompts = [i.prompt for i in load_persona(folder)]
    else:
        raise HarnessError(f"unknown prompt source {source!r}; known: eval, persona")
    sys_text = _system_text(system, folder)
    return [_prompt_messages(p, sys_text) for p in prompts]


def records_hash(records: Any) -> str:
    """A stable sha256 (hex) of ``records`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    blob = json.dumps(records, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def pretrain_texts(folder: Optional[PathLike] = None) -> list[str]:
    """General, D0-style Japanese text (of ``folder``) for pretraining the tiny base.

    The system prompt, every persona prompt with its neutral D0 reply (as one text each, and
    each reply alone) and every evaluation prompt. No D1 reply is included, so the base does
    not already speak ojousama.
    """
    items = load_persona(folder)
    texts = [system_prompt(folder)]
    texts += [f"{i.prompt}\n{i.d0}" for i in items]
    texts += [i.d0 for i in items]
    texts += [e.prompt for e in load_eval_prompts(folder)]
    return texts
