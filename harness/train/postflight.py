"""Post-flight after a node trains: the SAVED folder read back against the base it was trained from.

A fine-tune can train well and still be saved so that it stops wrongly when served (transformers #48592
saved Qwen fine-tunes with ``bos_token_id: null``). The post-flight reads what the node saved, and only
reads it (nothing in the folder changes, so no node key does):

- every special id (BOS, EOS, pad) that the base's ``config.json``, ``generation_config.json`` or tokenizer
  had is still there, with the base's ids (``special-id-dropped`` / ``special-id-changed``);
- the saved stop tokens agree: the tokenizer's EOS and the chat template's end-of-turn are among the ids
  generation stops on (the pre-flight's codes, :func:`harness.train.preflight.stop_token_findings`);
- the saved tokenizer renders a fixed conversation exactly as the base's does (``chat-template-changed``);
- the LoRA adapter (``adapter/``) is there (``adapter-missing``) and, served on its parent with the node's
  tokenizer, stops on the template's end-of-turn (the stop-token codes, the file named ``adapter on the
  parent's generation_config.json``).

An error fails the node's build unless the plan's ``[preflight] allow`` names its code with a reason;
the result goes into ``meta.json`` under ``postflight``. Nodes cached before the post-flight existed
are checked when the findings are written (:func:`check`, which never raises on a finding).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError, NodeError
from harness.train.common import ADAPTER_DIR
from harness.train.preflight import GENERATION_SIDE, TOKENIZER_SIDE, show_ids, stop_token_findings, token_names

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")

#: The conversation both tokenizers render (with a system turn, then without one for templates that refuse it).
CONVERSATION = [{"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"},
                {"role": "assistant", "content": "Green."}]


class PostflightError(NodeError):
    """A node's saved folder would stop wrongly when served; the message names the node, file and field."""


@dataclass
class PostflightResult:
    """What the post-flight found for one node's saved folder (``status``: clean, allowed, warning or error)."""

    node: str
    status: str
    base: str  # the folder the saved one was compared with
    findings: list[dict] = field(default_factory=list)  # {"code", "severity", "file", "field", "message"}
    allowed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def errors(self) -> list[dict]:
        return [f for f in self.findings if f["severity"] == "error" and f["code"] not in self.allowed]


def _finding(code: str, severity: str, file: str, fld: str, message: str) -> dict:
    return {"code": code, "severity": severity, "file": file, "field": fld, "message": f"{file}: {message}"}


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path}: cannot be read as JSON: {e}") from None
    return data if isinstance(data, dict) else None


def _ids(value: Any) -> list[int] | None:
    """A special-id field as a sorted list of ids (None: null or absent)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return sorted({int(v) for v in items if v is not None}) or None


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - any loading error is the finding: the folder cannot be served
        raise HarnessError(f"{folder}: the tokenizer cannot be loaded: {type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=4)
def _base_tokenizer(folder: str, stamp: tuple) -> Any:
    """The base's tokenizer, loaded once for every node checked against it (``stamp``: its files' mtimes)."""
    return _load_tokenizer(Path(folder))


def _stamp(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*") if p.is_file()))


def generation_eos_of(folder: Path) -> tuple[str, list[int]]:
    """(the file that gives it, the ids) of the EOS generation stops on: ``generation_config.json``'s
    ``eos_token_id``, else ``config.json``'s."""
    for name in (GENERATION_CONFIG, CONFIG):
        ids = _ids((_read_json(folder / name) or {}).get("eos_token_id"))
        if ids:
            return name, ids
    return GENERATION_CONFIG, []


def special_id_findings(saved: Path, base: Path, saved_tok: Any, base_tok: Any) -> list[dict]:
    """Errors where a special id the base had (in its config, generation config or tokenizer) is null,
    missing or other ids in the saved folder."""
    out: list[dict] = []
    sources = [(CONFIG, _read_json(base / CONFIG), _read_json(saved / CONFIG)),
               (GENERATION_CONFIG, _read_json(base / GENERATION_CONFIG), _read_json(saved / GENERATION_CONFIG))]
    for file, b, s in sources:
        if b is None:
            continue
        if s is None:
            out.append(_finding("special-id-dropped", "error", file, "", "missing from the saved folder; the base "
                                f"has one ({', '.join(f'{k} {show_ids(_ids(b.get(k)))}' for k in SPECIAL_FIELDS)})"))
            continue
        for fld in SPECIAL_FIELDS:
            out += _compare(file, fld, _ids(b.get(fld)), _ids(s.get(fld)), base_tok)
    for fld in SPECIAL_FIELDS:
        token = fld.removesuffix("_id")
        out += _compare(TOKENIZER_CONFIG, token, _ids(getattr(base_tok, fld, None)),
                        _ids(getattr(saved_tok, fld, None)), base_tok, saved_tok)
    return out


def _compare(file: str, fld: str, b: list[int] | None, s: list[int] | None, tok: Any,
             saved_tok: Any = None) -> list[dict]:
    """``saved_tok``: the field is a tokenizer's token, shown by name."""
    if b is None:
        return []  # the base had none: nothing to lose (a pad added for training is the recipe's own)
    if s is None:
        return [_finding("special-id-dropped", "error", file, fld,
                         f"{fld} is null; the base's is {token_names(tok, b)}")]
    lost = [i for i in b if i not in s]
    if lost:
        have = token_names(saved_tok, s) if saved_tok is not None else show_ids(s)
        return [_finding("special-id-changed", "error", file, fld,
                         f"{fld} {have} lacks the base's {token_names(tok, lost)}")]
    return []


def stop_findings(tok: Any, gen_file: str, gen: Sequence[int], where: str = "") -> list[dict]:
    """The saved stop tokens: the tokenizer's EOS and the template's end-of-turn must be generation EOS ids.
    The codes are the pre-flight's (:func:`harness.train.preflight.stop_token_findings` decides them); here
    each names the file that disagrees (``where`` + ``gen_file``, or the tokenizer's config) and its field."""
    files = {TOKENIZER_SIDE: where + TOKENIZER_CONFIG, GENERATION_SIDE: where + gen_file}
    return [_finding(f.code, f.severity, files[f.side], f.field, f.message) for f in stop_token_findings(tok, gen)[1]]


def _render(tok: Any, generation_prompt: bool) -> str | None:
    for msgs in (CONVERSATION, CONVERSATION[1:]):  # some templates refuse a system turn
        convo = msgs[:-1] if generation_prompt else msgs
        try:
            return tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception:  # noqa: BLE001 - no template, or one that refuses this conversation
            continue
    return None


def template_file(folder: Path) -> str:
    """Where a saved tokenizer keeps its chat template."""
    return "chat_template.jinja" if (folder / "chat_template.jinja").is_file() else TOKENIZER_CONFIG


def template_findings(saved: Path, saved_tok: Any, base_tok: Any) -> list[dict]:
    """An error when the saved tokenizer renders the fixed conversation (with and without a generation
    prompt) otherwise than the base's, or its rendering tokenizes to other ids."""
    file = template_file(saved)
    for gp in (False, True):
        want, have = _render(base_tok, gp), _render(saved_tok, gp)
        if want is None:
            continue  # the base has no template that renders it: nothing to keep
        what = "with a generation prompt" if gp else "the fixed conversation"
        if have is None:
            return [_finding("chat-template-changed", "error", file, "chat_template",
                             f"the saved tokenizer cannot render {what}; the base's renders {want[:60]!r}…")]
        if have != want:
            k = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            return [_finding("chat-template-changed", "error", file, "chat_template",
                             f"renders {what} otherwise than the base's from character {k}: base "
                             f"{want[max(0, k - 20):k + 20]!r}, saved {have[max(0, k - 20):k + 20]!r}")]
        ids_want = base_tok(want, add_special_tokens=False)["input_ids"]
        ids_have = saved_tok(have, add_special_tokens=False)["input_ids"]
        if list(ids_want) != list(ids_have):
            k = next((i for i, (a, b) in enumerate(zip(ids_want, ids_have)) if a != b), min(len(ids_want), len(ids_have)))
            return [_finding("chat-template-changed", "error", "tokenizer.json", "vocabulary",
                             f"the same rendering of {what} tokenizes otherwise than with the base's tokenizer "
                             f"from token {k}: base {list(ids_want[k:k + 4])}, saved {list(ids_have[k:k + 4])}")]
    return []


def adapter_findings(saved: Path, parent: Path, saved_tok: Any) -> list[dict]:
    """The LoRA adapter as served on its parent: its files are there, and the parent's generation config
    stops on the node's tokenizer's end-of-turn and EOS."""
    adapter = saved / ADAPTER_DIR
    where = f"{ADAPTER_DIR}/"
    if not (adapter / "adapter_config.json").is_file():
        return [_finding("adapter-missing", "error", where + "adapter_config.json", "",
                         "missing: the node saved no LoRA adapter to serve on its parent")]
    if not any(adapter.glob("adapter_model.*")):
        return [_finding("adapter-missing", "error", where + "adapter_model.safetensors", "",
                         "missing: the adapter has a config but no weights")]
    gen_file, gen = generation_eos_of(parent)
    return stop_findings(saved_tok, gen_file, gen, where=f"{ADAPTER_DIR} on the parent's ")


def check(node: str, saved: str | Path, base: str | Path, parent: str | Path | None = None,
          allow: Mapping[str, str] | None = None, adapter: bool = True) -> PostflightResult:
    """Post-flight one node's saved folder against ``base`` (the graph's base folder); ``parent`` is the
    folder its adapter (``adapter``: the node saves one, as every trained node does) is served on
    (default: ``base``). Never raises on a finding: see :func:`run`."""
    saved, base = Path(saved), Path(base)
    parent = Path(parent) if parent is not None else base
    saved_tok, base_tok = _load_tokenizer(saved), _base_tokenizer(str(base), _stamp(base))
    found = special_id_findings(saved, base, saved_tok, base_tok)
    gen_file, gen = generation_eos_of(saved)
    found += stop_findings(saved_tok, gen_file, gen)
    found += template_findings(saved, saved_tok, base_tok)
    if adapter:
        found += adapter_findings(saved, parent, saved_tok)
    allow = dict(allow or {})
    allowed = {f["code"]: allow[f["code"]] for f in found if f["code"] in allow}
    errors = [f for f in found if f["severity"] == "error" and f["code"] not in allow]
    status = "error" if errors else "allowed" if allowed else "warning" if found else "clean"
    return PostflightResult(node, status, str(base), found, allowed)


def run(node: str, saved: str | Path, base: str | Path, parent: str | Path | None = None,
        allow: Mapping[str, str] | None = None, where: str = "", adapter: bool = True) -> PostflightResult:
    """:func:`check`, raising :class:`PostflightError` on an error the plan does not allow."""
    result = check(node, saved, base, parent, allow, adapter)
    errors = result.errors
    if errors:
        more = f" (+{len(errors) - 1} more: {', '.join(e['code'] for e in errors[1:])})" if len(errors) > 1 else ""
        raise PostflightError(f"post-flight {where}{node}: {errors[0]['code']}: {errors[0]['message']}{more}; "
                              "the saved checkpoint would not stop as its base does when served (fix the save, or "
                              "allow the code in the plan's [preflight] allow with a reason)", node)
    return result
