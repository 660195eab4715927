"""``audit()``: run the real pipelines on a dataset and collect the label/EOS codes it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from harness.audit import codes as F
from harness.audit.loading import (FORMATS, check_tokenizer, default_records, detect_format,
                                   generation_eos_ids, load_records, load_tokenizer, read_template,
                                   render, resolve_tokenizer, system_hint, tokenize_messages)
from harness.audit.pipelines import (MASKS_PAD, PIPELINES, READS_TEMPLATE_FIELDS, TEMPLATE_FIELDS, Job, Trained,
                                     pipeline_error, template_kwargs)
from harness.audit.packing import STRATEGIES
from harness.audit.thinking import think_hits
from harness.audit.turns import TRAIN_TURNS, turn_hits, turn_notes
from harness.audit.report import Audited, AuditReport, aggregate
from harness.errors import HarnessError, LoadError, PipelineError

ALL = ("trl-sft", "trl-dpo", "hf-clm")


def audit(
    tokenizer: Any,
    *,
    chat_template: Union[str, Path, None] = None,
    fmt: str = "conversational",
    data: Union[str, Path, Sequence[dict], None] = None,
    pipeline: str = "trl-sft",
    max_length: Optional[int] = None,
    response_marker: Optional[str] = None,
    zoo: Union[str, Path, None] = None,
    tokenizer_kwargs: Optional[dict] = None,
    generation_eos: Optional[Iterable[int]] = None,
    limit: Optional[int] = None,
    assistant_only_loss: bool = False,
    fold_system: bool = False,
    data_dir: Union[str, Path, None] = None,
    cache_root: Union[str, Path, None] = None,
    packing: Optional[str] = None,
    padding_free: bool = False,
    data_collator: Optional[Callable] = None,
    train_turns: Optional[str] = None,
    completion_only_loss: Optional[bool] = None,
) -> AuditReport:
    """Audit what ``pipeline`` trains on for ``tokenizer`` and a dataset.

    ``tokenizer`` is a hub id, a folder, a zoo folder name or a tokenizer object.
    ``chat_template`` is a Jinja file path or the template text itself. ``data`` is a JSONL path
    or a list of records in ``fmt`` (default: the persona fixtures). ``max_length=None`` keeps
    trl's own default. ``response_marker`` (text format) marks where the reply begins.
    ``assistant_only_loss`` sets trl's SFTConfig option (conversational/messages data; the
    template's ``{% generation %}`` blocks decide what is trained). ``fold_system`` folds a
    system message into the first user turn (for templates that reject the system role).
    ``data_dir`` is where the persona fixtures are read (default: the packaged ``fixtures/data``).
    ``cache_root`` is the fixture cache a ``.gguf`` tokenizer is converted into (default: the project's).
    ``packing`` (a trl ``packing_strategy``: bfd, bfd_split, wrapped), ``padding_free`` and ``data_collator``
    (the SFTTrainer's ``data_collator``) make trl-sft audit the collated batch, segment by segment.
    ``train_turns`` states which assistant turns of a conversation are meant to be trained (``last`` or
    ``all``); tool results and end-of-turn tokens of earlier turns are checked whatever it is.
    ``completion_only_loss`` sets trl's SFTConfig option (None: trl's default, True for prompt/completion).
    """
    if fmt not in FORMATS:
        raise HarnessError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    names = list(ALL) if pipeline == "all" else [pipeline]
    for p in names:
        PIPELINES.get(p)  # unknown names list the known ones
    if response_marker is not None and fmt != "text":
        raise HarnessError("--response-marker applies to --format text only")
    if assistant_only_loss and fmt not in ("conversational", "messages"):
        raise HarnessError("assistant_only_loss applies to conversational or messages data only")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise HarnessError(f"max_length must be a positive number of tokens, not {max_length!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise HarnessError(f"limit must be a positive number of examples, not {limit!r}")
    if packing is not None and packing not in STRATEGIES:
        raise HarnessError(f"unknown packing strategy {packing!r}; trl's: {', '.join(STRATEGIES)}")
    if train_turns not in TRAIN_TURNS:
        raise HarnessError(f"train_turns must be one of {', '.join(t for t in TRAIN_TURNS if t)}, not {train_turns!r}")
    batched = packing is not None or padding_free or data_collator is not None or completion_only_loss is not None
    if batched and "trl-sft" not in names:
        raise HarnessError("packing, padding_free, data_collator and completion_only_loss apply to the trl-sft "
                           "pipeline only")
    sft = {"packing": packing, "padding_free": padding_free, "collator": data_collator,
           "completion_only_loss": completion_only_loss}
    tok, name, gen, old_template = _load(tokenizer, chat_template, zoo, tokenizer_kwargs, cache_root)
    try:
        return _audit(tok, name, gen, fmt=fmt, data=data, pipeline=pipeline, names=names, max_length=max_length,
                      response_marker=response_marker, generation_eos=generation_eos, limit=limit,
                      assistant_only_loss=assistant_only_loss, fold_system=fold_system, data_dir=data_dir,
                      sft=sft, train_turns=train_turns)
    finally:
        if old_template is not _KEEP:
            tok.chat_template = old_template  # the caller's tokenizer object is left as it was


_KEEP = object()


def _audit(tok, name: str, gen: list[int], *, fmt, data, pipeline, names, max_length, response_marker,
           generation_eos, limit, assistant_only_loss, fold_system=False, data_dir=None, sft=None,
           train_turns=None) -> AuditReport:
    if generation_eos is not None:
        gen = list(generation_eos)
    check_tokenizer(tok, name)
    records = _records(data, fmt, tok, limit, data_dir)
    if fold_system:
        records = [fold_system_prompt(r) for r in records]
    check_encodes(tok, name, records)
    info = F.token_info(tok, gen)
    audited: list[Audited] = []
    notes: list[str] = []
    n_examples = len(records)
    for p in names:
        recs, rfmt = records, fmt
        if p == "trl-dpo" and fmt != "preference":
            if pipeline != "all":
                raise HarnessError("pipeline trl-dpo needs --format preference")
            if data is not None:
                notes.append("trl-dpo skipped: the data is not in preference format")
                continue
            recs, rfmt = default_records("preference", tok, limit, data_dir), "preference"
        elif p != "trl-dpo" and fmt == "preference":
            if pipeline != "all":
                raise HarnessError(f"format preference needs pipeline trl-dpo, not {p}")
            notes.append(f"{p} skipped: preference data trains only through trl-dpo")
            continue
        if p not in READS_TEMPLATE_FIELDS and any(k in r for r in recs for k in TEMPLATE_FIELDS):
            notes.append(f"{p} renders without the records' {' / '.join(TEMPLATE_FIELDS)} "
                         "(the plain recipe does not read them; trl does)")
        if p != "trl-sft" and sft and (sft["packing"] or sft["padding_free"] or sft["collator"] is not None
                                       or sft["completion_only_loss"] is not None):
            notes.append(f"{p} audited without the trl-sft options (packing, padding-free, collator, "
                         "completion_only_loss)")
        got = _run(p, tok, info, recs, rfmt, max_length, response_marker,
                   assistant_only_loss and p == "trl-sft", gen, sft if p == "trl-sft" else None, train_turns)
        audited += got
        notes += turn_notes(p, got)
    return AuditReport(name, pipeline, n_examples, aggregate(audited), audited, notes, tok, info)


def fold_system_prompt(rec: dict) -> dict:
    """The record with a leading system message folded into the first user turn (``system\n\nuser``)."""
    key = "messages" if "messages" in rec else "prompt"
    msgs = rec.get(key)
    if not (isinstance(msgs, list) and msgs and msgs[0].get("role") == "system"):
        return rec
    rest = [dict(m) for m in msgs[1:]]
    if rest and rest[0].get("role") == "user":
        rest[0]["content"] = f"{msgs[0]['content']}\n\n{rest[0]['content']}"
    else:
        rest.insert(0, {"role": "user", "content": msgs[0]["content"]})
    return {**rec, key: rest}


def _texts(rec: dict) -> list[str]:
    out = []
    for key in ("text", "prompt", "completion", "messages", "chosen", "rejected"):
        v = rec.get(key)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out += [m.get("content", "") for m in v if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return [t for t in out if t.strip()]


def check_encodes(tok, name: str, records: list[dict]) -> None:
    """No verdict on a tokenizer that cannot encode the data: text must give tokens, not only unknowns."""
    texts = [t for r in records[:8] for t in _texts(r)][:16]
    if not texts:
        return
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    unk = tok.unk_token_id
    for text, row in zip(texts, ids):
        if not row or (unk is not None and all(t == unk for t in row)):
            raise LoadError(f"tokenizer {name!r} cannot encode the data: {text[:40]!r} gives "
                            f"{'no tokens' if not row else 'only unknown tokens'} (vocabulary size {len(tok)})")


def _load(tokenizer: Any, chat_template, zoo, kwargs, cache_root=None) -> tuple[Any, str, list[int], Any]:
    """The tokenizer, its name, its generation EOS ids, and the template to restore afterwards."""
    old: Any = _KEEP
    if isinstance(tokenizer, (str, Path)):
        where = resolve_tokenizer(tokenizer, zoo)
        tok = load_tokenizer(tokenizer, zoo, cache_root=cache_root, **(kwargs or {}))
        name, gen = str(tokenizer), generation_eos_ids(where)
    else:
        tok, name, gen = tokenizer, getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__, []
    if chat_template is not None:
        text = str(chat_template)
        text = text if ("{%" in text or "{{" in text) else read_template(text)
        if not isinstance(tokenizer, (str, Path)):
            old = tok.chat_template
        tok.chat_template = text
    return tok, name, gen, old


def _records(data, fmt: str, tok, limit: Optional[int], data_dir=None) -> list[dict]:
    if data is None:
        recs = default_records(fmt, tok, limit, data_dir)
    elif isinstance(data, (str, Path)):
        recs = load_records(data, fmt)
    else:
        recs = [dict(r) for r in data]
    if limit:
        recs = recs[:limit]
    if not recs:
        raise LoadError("the dataset has no examples")
    for i, r in enumerate(recs):
        got = detect_format(r)
        if got != fmt and not (fmt == "preference" and "chosen" in r):
            raise LoadError(f"example {i} is in {got} format, not {fmt} (keys: {sorted(r)})")
    if fmt in ("conversational", "messages") or (fmt == "preference" and isinstance(recs[0]["prompt"], list)):
        if not getattr(tok, "chat_template", None):
            raise LoadError(f"tokenizer {tok.name_or_path!r} has no chat template; pass --chat-template FILE")
    return recs


def _split_marker(text: str, marker: str, i: int) -> int:
    k = text.rfind(marker)
    if k < 0:
        raise LoadError(f"example {i}: response marker {marker!r} not found in its text")
    return k + len(marker)


def _reply(rec: dict, side: Optional[str], marker: Optional[str]) -> Optional[str]:
    """The completion's text, as the reference for what must be trained (None when unknown)."""
    if "messages" in rec:
        last = rec["messages"][-1] if rec["messages"] else {}
        return last.get("content") if last.get("role") == "assistant" else None
    value = rec.get(side or "completion")
    if isinstance(value, list):
        return "".join(m.get("content", "") for m in value)
    if isinstance(value, str):
        return value
    if marker is not None and "text" in rec:
        return rec["text"][rec["text"].rfind(marker) + len(marker):]
    return None


def _injected(tok, rec: dict, i: int, prompt_texts: list[str], specials: set[str], kwargs: dict) -> str:
    """Template text in no message, checked on the rendered prompt (where default system prompts,
    dates and replaced messages land); text the template adds after the reply is trained-after-stop.
    ``kwargs`` are the record's own template settings; its tool descriptions count as its content."""
    if prompt_texts:
        msgs, text = rec["prompt"], prompt_texts[i]
    elif "messages" in rec:
        msgs = rec["messages"]
        text = render(tok, msgs, i, **kwargs)
    else:
        return ""
    return F.injected_text(text, [m["content"] for m in msgs] + _tool_texts(kwargs.get("tools")), specials)


def _tool_texts(tools: Any) -> list[str]:
    """The record's tool schemas as the template may write them (JSON of each, and its description)."""
    import json

    out: list[str] = []
    for t in tools or []:
        out.append(json.dumps(t))
        out.append(json.dumps(t, ensure_ascii=False, indent=4))
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("description"), str):
            out.append(fn["description"])
    return out


def _ref_prompt(tok, rec: dict, i: int, marker: Optional[str], kwargs: dict) -> Optional[list[int]]:
    if "messages" in rec:
        msgs = rec["messages"]
        prompt = msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else None
        return tokenize_messages(tok, prompt, i, add_generation_prompt=True, **kwargs) if prompt else None
    if "prompt" in rec:
        if isinstance(rec["prompt"], list):
            return tokenize_messages(tok, rec["prompt"], i, add_generation_prompt=True, **kwargs)
        return list(tok(rec["prompt"])["input_ids"])
    if marker is not None:
        return list(tok(rec["text"][:_split_marker(rec["text"], marker, i)])["input_ids"])
    return None


def _ref_prompts(tok, recs: list[dict], marker: Optional[str],
                 kwargs: Sequence[dict]) -> tuple[list[Optional[list[int]]], list[str]]:
    """Reference prompt ids of every record, and the rendered chat prompts ([] for plain text).

    Chat prompts are rendered with each record's own template settings (``kwargs``, as trl passes
    them), in one batched template call when no record has any, and tokenized in one batch, as
    ``apply_chat_template(tokenize=True)`` does (no added special tokens).
    """
    if all(isinstance(r.get("prompt"), list) for r in recs):
        texts = None
        if not any(kwargs):
            try:
                texts = tok.apply_chat_template([r["prompt"] for r in recs], tokenize=False,
                                                add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - the per-record path names the example that fails
                texts = None
        if texts is None:
            texts = [render(tok, r["prompt"], i, add_generation_prompt=True, **kw)
                     for i, (r, kw) in enumerate(zip(recs, kwargs))]
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        return [list(x) for x in ids], list(texts)
    return [_ref_prompt(tok, r, i, marker, kw) for i, (r, kw) in enumerate(zip(recs, kwargs))], []


def _trl_records(recs: list[dict], pipeline: str, marker: Optional[str]) -> list[dict]:
    """Text with a response marker goes to trl as prompt/completion split at the marker: the trl 1.x
    replacement of DataCollatorForCompletionOnlyLM. hf-clm trains the text as it is."""
    if marker is None or pipeline != "trl-sft":
        return recs
    out = []
    for i, r in enumerate(recs):
        k = _split_marker(r["text"], marker, i)
        out.append({"prompt": r["text"][:k], "completion": r["text"][k:]})
    return out


def _run(p: str, tok, info: F.TokenInfo, recs: list[dict], fmt: str, max_length, marker,
         assistant_only_loss: bool = False, gen: Sequence[int] = (), sft: Optional[dict] = None,
         train_turns: Optional[str] = None) -> list[Audited]:
    kwargs = template_kwargs(recs) if p in READS_TEMPLATE_FIELDS else [{} for _ in recs]
    refs, prompt_texts = _ref_prompts(tok, recs, marker, kwargs)
    job = Job(tok, _trl_records(recs, p, marker), max_length, refs, assistant_only_loss, **(sft or {}))
    try:
        seqs = PIPELINES.get(p)(job)
    except Exception as e:  # noqa: BLE001 - the pipeline's own errors become one line naming the record
        err = pipeline_error(p, e)
        if err is None:
            raise
        if err.example is not None and err.example < len(recs):
            rec = recs[err.example]
            msgs = rec.get("prompt") if isinstance(rec.get("prompt"), list) else rec.get("messages") or []
            err = PipelineError(str(err) + system_hint(msgs), err.pipeline, err.example)
        raise err from None
    specials = {str(t) for t in tok.all_special_tokens}
    specials |= {str(a.content) for a in getattr(tok, "added_tokens_decoder", {}).values()}
    injected = [_injected(tok, r, i, prompt_texts, specials, kwargs[i]) for i, r in enumerate(recs)]
    mismatch = None
    if gen and info.eos_id not in gen:
        mismatch = F.Hit("eos-config-mismatch", F.WARNING, [],
                         f"tokenizer EOS {F._name(tok, info.eos_id)}; generation_config.eos_token_id "
                         f"{sorted(gen)} ({', '.join(F._name(tok, g) for g in sorted(gen))})")
    out = []
    for s in seqs:
        hits = F.detect(tok, info, s.ids, s.labels, s.prompt_len, s.ref_prompt_len, s.full,
                        reply=_reply(recs[s.index], s.side, marker), pad_masked=p in MASKS_PAD)
        if injected[s.index]:
            hits.append(F.Hit("template-injects", F.WARNING, [], f"{injected[s.index]!r}"))
        if mismatch is not None:
            hits.append(mismatch)
        hits += s.extra
        if not s.dropped:
            hits += think_hits(tok, info, s, recs[s.index])
            hits = turn_hits(tok, info, s, recs[s.index], kwargs[s.index], train_turns, hits)
        out.append(Audited(p, s, hits))
    return out


def trained_text(tok, seq: Trained) -> str:
    """The decoded trained span of a sequence (special tokens kept)."""
    return tok.decode([t for t, lab in zip(seq.ids, seq.labels) if lab != F.IGNORE])


def preflight(
    tokenizer: Any,
    records: Sequence[dict],
    *,
    pipeline: str = "trl-sft",
    chat_template: Union[str, Path, None] = None,
    max_length: Optional[int] = None,
    assistant_only_loss: bool = False,
    generation_eos: Optional[Iterable[int]] = None,
    tokenizer_kwargs: Optional[dict] = None,
    packing: Optional[str] = None,
    padding_free: bool = False,
    train_turns: Optional[str] = None,
) -> AuditReport:
    """Pre-flight audit of the records a training run is about to use, with its pipeline and tokenizer.

    The format is read off the first record (preference pairs go through ``trl-dpo``). Bad input
    raises :class:`harness.errors.HarnessError`; an error-level finding leaves ``report.ok`` False
    (``report.errors`` names them; ``report.exit_code == 1``).
    """
    recs = [dict(r) for r in records]
    if not recs:
        raise LoadError("pre-flight: no training records")
    fmt = detect_format(recs[0])
    if fmt == "preference" and pipeline == "trl-sft":
        pipeline = "trl-dpo"
    return audit(tokenizer, data=recs, fmt=fmt, pipeline=pipeline, chat_template=chat_template,
                 max_length=max_length, assistant_only_loss=assistant_only_loss, generation_eos=generation_eos,
                 tokenizer_kwargs=tokenizer_kwargs, packing=packing, padding_free=padding_free,
                 train_turns=train_turns)
