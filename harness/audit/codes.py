"""The label/EOS audit's codes and the detectors that produce them.

Every code is registered once in :data:`CODES` with its default severity, a message and a fix
hint. The detectors read one trained sequence (ids, labels, the reference prompt length) and
return :class:`Hit` objects; :mod:`harness.audit.report` aggregates them per code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from harness.registry import Registry

ERROR = "error"
WARNING = "warning"
IGNORE = -100


@dataclass(frozen=True)
class CodeSpec:
    """A finding code: its default severity, what it means and how to fix it."""

    code: str
    severity: str
    message: str
    hint: str


CODES: Registry[CodeSpec] = Registry("finding code")


def _code(code: str, severity: str, message: str, hint: str) -> None:
    CODES.add(code, CodeSpec(code, severity, message, hint))


_code("eos-missing", ERROR, "the trained span does not end in a stop token",
      "append the EOS / end-of-turn token to every completion (trl appends tokenizer.eos_token to "
      "non-conversational text; chat templates must emit an end-of-turn token)")
_code("eos-split", ERROR, "the EOS text appears in the trained labels as ordinary pieces",
      "the tokenizer does not parse the EOS text as a special token: append tokenizer.eos_token_id "
      "to the ids instead of the text, or load the tokenizer without split_special_tokens")
_code("eos-masked", ERROR, "the stop token is present but its label is -100",
      "pad == eos makes the collator mask the EOS: set a distinct pad token (an unused special "
      "token) or build labels before padding; with assistant_only_loss, put the end-of-turn token "
      "inside the template's {% generation %} block")
_code("end-of-turn-is-pad", ERROR, "the stop token is the pad token, so the collator masks it",
      "the end-of-turn token is already in the data; the collator gives every pad-id position label -100: "
      "set pad_token to a token the template never writes (an unused reserved special token, or add one) "
      "instead of the end-of-turn token")
_code("stop-not-generation-eos", ERROR,
      "the trained stop token is not one that generation stops on",
      "add the trained end-of-turn token to generation_config.eos_token_id (or set "
      "tokenizer.eos_token / SFTConfig(eos_token=...) to it)")
_code("eos-duplicated", ERROR, "more than one stop token ends one completion",
      "the template already emits the EOS: do not append another one (strip it from the data "
      "or from the template)")
_code("double-bos", ERROR, "two BOS tokens open the sequence",
      "the text already starts with the BOS text and the tokenizer adds another: drop the "
      "literal BOS from the text/template or tokenize with add_special_tokens=False")
_code("prompt-trained", ERROR, "prompt tokens carry labels",
      "use prompt-completion data (trl masks the prompt, completion_only_loss) or "
      "assistant_only_loss=True for messages; trl 1.x has no DataCollatorForCompletionOnlyLM")
_code("completion-masked", ERROR, "completion text tokens are masked",
      "check the completion mask / response marker: the reply itself must carry labels")
_code("all-masked", ERROR, "the example trains nothing",
      "the prompt fills max_length or every label is -100: raise max_length or shorten the prompt")
_code("eos-truncated", ERROR, "max_length cut the completion's stop token",
      "raise max_length above the longest example, or drop over-long examples")
_code("prefix-mismatch", WARNING,
      "the tokenized prompt is not a prefix of the tokenized prompt+completion",
      "tokens merge across the prompt/completion boundary or the template renders the prompt "
      "differently alone: end the prompt on a token boundary (e.g. a newline)")
_code("template-injects", WARNING,
      "the chat template adds text that is in no message",
      "the template inserts a default system prompt, a date, or replaces a message: pass a "
      "template without it (--chat-template) or accept it knowingly")
_code("trained-after-stop", ERROR, "tokens after the stop token carry labels",
      "the template appends text after the end-of-turn token (e.g. a new assistant header): "
      "use a template that ends the conversation at the stop token")
_code("bos-missing", WARNING, "the tokenizer defines a BOS but no BOS opens the sequence",
      "check whether the model was trained with a BOS; add bos_token to the template if so")
_code("eos-config-mismatch", WARNING, "the tokenizer's EOS is not among the generation config's EOS ids",
      "at training time transformers aligns the configs to the tokenizer (the model config's single "
      "eos_token_id is replaced by the tokenizer's EOS and the generation config gains it): set "
      "tokenizer.eos_token to the token the model stops on, or add it to generation_config.json")
_code("think-injected", WARNING, "the trained span holds a <think> block that is in no message",
      "the template writes an empty reasoning block into the final assistant turn (Qwen3 with "
      "enable_thinking): the model learns to answer without reasoning; put the reasoning in the data "
      "(reasoning_content) or train with the template's non-thinking mode knowingly")
_code("think-dropped", WARNING, "reasoning given in the data is not in the trained sequence",
      "the template strips <think> content / reasoning_content from earlier turns (or all turns): "
      "split multi-turn reasoning data into one example per assistant turn, or use a template that keeps it")

# Packed / padding-free batches (trl-sft with packing or padding_free): the collated batch, not the example.
_code("packed-cross-attention", ERROR, "examples share an attention segment in the packed batch",
      "the collator pads packed rows with an all-ones attention mask (or its position_ids do not restart per "
      "example): each example attends to the ones packed before it; use packing_strategy='bfd' (trl then turns "
      "padding_free on and restarts position_ids per example) with a flash-attention / sdpa model")
_code("packed-label-crosses", ERROR, "a trained label is the continuation of another example or segment",
      "the loss predicts the label at p from position p-1: the first token of an example packed after another "
      "must have label -100 (trl's padding-free collator masks position_ids == 0); use packing_strategy='bfd' "
      "or mask the first label of every packed example")
_code("packed-reply-cut", ERROR, "packing cut the example into pieces trained in different segments",
      "the 'wrapped' / 'bfd_split' strategies cut examples at max_length: the reply's tail trains without its "
      "prompt and its head ends without a stop token; use packing_strategy='bfd' with a max_length above the "
      "longest example")
_code("batch-mask-changed", ERROR, "the collated batch trains other tokens than the labels trl prepared for the example",
      "the collator rebuilds labels from input_ids (prompt / assistant-only masks lost, trl #3728 style): use "
      "trl's own collator, or one that keeps the dataset's labels column")
# Multi-turn conversations and tool turns.
_code("turn-trained", ERROR, "an earlier assistant turn is trained though only the last was meant to be",
      "put earlier turns in the prompt (prompt/completion with completion_only_loss) or mask them; with "
      "assistant_only_loss every {% generation %} block is trained")
_code("turn-masked", ERROR, "an assistant turn meant to be trained is masked",
      "a prompt/completion split keeps earlier assistant turns in the masked prompt: use messages with "
      "assistant_only_loss=True, or one example per assistant turn")
_code("turn-stop-masked", ERROR, "an earlier assistant turn is trained but its end-of-turn token is not",
      "the model learns the turn's text and never to stop after it: put the end-of-turn token inside the "
      "template's {% generation %} block")
_code("turn-stop-only", ERROR, "an earlier assistant turn's end-of-turn token is trained while its text is masked",
      "history masking that leaves the old turn's EOS trained (LLaMA-Factory #10827): the model learns to end "
      "turns it did not write; mask the whole old turn, end-of-turn included")
_code("tool-result-trained", ERROR, "the content of a tool message (role tool) carries labels",
      "tool results are inputs, not replies: keep them in the prompt, or use assistant_only_loss with a "
      "template whose {% generation %} blocks cover assistant turns only")


@dataclass
class Hit:
    """One finding in one sequence: the code, its severity, token positions and a detail."""

    code: str
    severity: str
    positions: list[int] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True)
class TokenInfo:
    """What the detectors need to know about a tokenizer."""

    bos_id: Optional[int]
    eos_id: int
    generation_eos: frozenset[int]
    stop_ids: frozenset[int]
    special_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    id_to_text: dict  # id -> decoded text, filled lazily
    role_stops: frozenset[int] = frozenset()  # role markers that end a turn (GLM: the next <|user|>)
    think_ids: tuple[Optional[int], Optional[int]] = (None, None)  # <think>, </think> when the vocabulary has them
    pad_id: Optional[int] = None
    turn_end: Optional[int] = None  # the special token the chat template writes after an assistant reply


_STOP_NAME = re.compile(r"eot|eos|end|</s>|stop", re.IGNORECASE)
_NOT_STOP = re.compile(r"header|start|begin|think|tool|pad", re.IGNORECASE)


def end_of_turn(tok) -> Optional[int]:
    """The first special token the chat template writes after an assistant reply (None if none, or no template)."""
    reply = "Zq9 reply"
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply}]
    try:
        text = tok.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render is the audit's to report
        return None
    k = text.rfind(reply)
    if k < 0:
        return None
    ids = tok(text[k + len(reply):], add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return next((int(i) for i in ids if i in special), None)


def token_info(tok, generation_eos: Sequence[int] = ()) -> TokenInfo:
    """Collect BOS/EOS ids, generation EOS ids and the end-of-turn special tokens of ``tok``.

    The token the chat template ends an assistant turn with is a stop token whatever its name, also
    when it is the pad token (a pad token that is no turn end and no generation EOS is not a stop)."""
    eos_id = tok.eos_token_id
    gen = {int(i) for i in generation_eos} | {int(eos_id)}
    special: set[int] = set(int(i) for i in tok.all_special_ids)
    stop_ids = set(gen)
    for tid, added in getattr(tok, "added_tokens_decoder", {}).items():
        if not getattr(added, "special", False):
            continue
        special.add(int(tid))
        name = str(added.content)
        if _STOP_NAME.search(name) and not _NOT_STOP.search(name):
            stop_ids.add(int(tid))
    if tok.bos_token_id != eos_id:  # GPT-2 style BOS == EOS stays a stop token
        stop_ids.discard(tok.bos_token_id)
    turn_end = end_of_turn(tok) if getattr(tok, "chat_template", None) else None
    pad = tok.pad_token_id
    if pad is not None and pad not in gen and pad != turn_end:
        stop_ids.discard(pad)
    if turn_end is not None and turn_end != tok.bos_token_id:
        stop_ids.add(turn_end)
    strings = {tok.convert_ids_to_tokens(i) for i in stop_ids}
    strings = tuple(sorted(s for s in strings if isinstance(s, str) and len(s) >= 3))
    roles = frozenset(i for i in stop_ids if _ROLE.search(str(tok.convert_ids_to_tokens(i))))
    return TokenInfo(tok.bos_token_id, int(eos_id), frozenset(gen), frozenset(stop_ids),
                     frozenset(special), strings, {}, roles, _think_ids(tok),
                     None if pad is None else int(pad), turn_end)


_ROLE = re.compile(r"user|observation|human", re.IGNORECASE)


def _think_ids(tok) -> tuple[Optional[int], Optional[int]]:
    vocab = {str(a.content): int(i) for i, a in getattr(tok, "added_tokens_decoder", {}).items()}
    return vocab.get("<think>"), vocab.get("</think>")


def _text(tok, info: TokenInfo, tid: int) -> str:
    t = info.id_to_text.get(tid)
    if t is None:
        t = tok.decode([tid])
        info.id_to_text[tid] = t
    return t


def _is_ws(tok, info: TokenInfo, tid: int) -> bool:
    return tid not in info.special_ids and _text(tok, info, tid).strip() == ""


def _name(tok, tid: int) -> str:
    return f"{tok.convert_ids_to_tokens(tid)!s} ({tid})"


def _find_split_stop(tok, info: TokenInfo, ids: Sequence[int], trained: Sequence[int]) -> list[int]:
    """Positions of a stop token's text spelled out by ordinary (non-special) trained pieces."""
    runs: list[list[int]] = []
    for i in trained:
        if ids[i] in info.special_ids:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        text = tok.decode([ids[i] for i in run])
        if not any(s in text for s in info.stop_strings):
            continue
        # Localize (rare path, only on a hit): the shortest prefix holding the text, then its shortest tail.
        def has(a: int, b: int) -> bool:
            piece = tok.decode([ids[i] for i in run[a:b]])
            return any(s in piece for s in info.stop_strings)

        b = next(b for b in range(1, len(run) + 1) if has(0, b))
        a = next(a for a in range(b - 1, -1, -1) if has(a, b))
        return run[a:b]
    return []


def detect(
    tok,
    info: TokenInfo,
    ids: Sequence[int],
    labels: Sequence[int],
    prompt_len: Optional[int],
    ref_prompt_len: Optional[int] = None,
    full: Optional[tuple[Sequence[int], Sequence[int]]] = None,
    reply: Optional[str] = None,
    pad_masked: bool = False,
) -> list[Hit]:
    """All findings of one trained sequence.

    ``prompt_len`` is where the reference says the completion starts (None: unknown, the whole
    sequence counts as completion); ``ref_prompt_len`` is the length of the prompt tokenized
    alone (for ``prefix-mismatch``); ``full`` holds the untruncated ids and labels when the
    pipeline truncated the sequence; ``reply`` is the completion's text, checked against the
    decoded trained span independently of the token boundary (whitespace ignored); ``pad_masked``
    says the pipeline's collator gives every pad-id position label -100.
    """
    hits: list[Hit] = []
    n = len(ids)
    bos = info.bos_id
    bos_is_eos = bos is not None and bos == info.eos_id
    if bos is not None and n and not bos_is_eos:  # GPT-2 style tokenizers open with no BOS
        if n >= 2 and ids[0] == bos and ids[1] == bos:
            hits.append(Hit("double-bos", ERROR, [0, 1], f"the sequence opens {ids[0]}, {ids[1]}"))
        elif ids[0] != bos:
            hits.append(Hit("bos-missing", WARNING, [0], f"the sequence opens {_name(tok, ids[0])}, "
                                                          f"not BOS {_name(tok, bos)}"))
    if prompt_len is not None and ref_prompt_len is not None and prompt_len < ref_prompt_len:
        hits.append(Hit("prefix-mismatch", WARNING, [prompt_len],
                        f"the prompt alone and prompt+completion diverge at token {prompt_len} "
                        f"of {ref_prompt_len}"))
    trained = [i for i in range(n) if labels[i] != IGNORE]
    if not trained:
        hits.append(Hit("all-masked", ERROR, [], "no label differs from -100"))
        return hits
    start = prompt_len or 0
    if prompt_len:
        pt = [i for i in trained if i < prompt_len]
        if pt:
            hits.append(Hit("prompt-trained", ERROR, pt, f"{len(pt)} of {prompt_len} prompt tokens are trained"))
    # A BOS that is also the EOS opens the sequence; it stops nothing.
    first = 1 if bos_is_eos and n and ids[0] == bos else 0
    stops = [i for i in range(max(start, first), n) if ids[i] in info.stop_ids]
    first_stop = stops[0] if stops else None
    end_text = first_stop if first_stop is not None else n
    cm = [i for i in range(max(start, first), end_text) if labels[i] == IGNORE]
    if not cm and reply and full is None:
        cm = _reply_masked_before(tok, ids, labels, trained, end_text, reply)
    if cm:
        hits.append(Hit("completion-masked", ERROR, cm, f"{len(cm)} of {end_text - start} completion tokens are masked"))
    trained_stops = [i for i in stops if labels[i] != IGNORE]
    split = _find_split_stop(tok, info, ids, [i for i in trained if i >= start])
    if split:
        hits.append(Hit("eos-split", ERROR, split, "the labels spell "
                        f"{tok.decode([ids[i] for i in split])!r} as ids {[ids[i] for i in split]}"))
    if trained_stops:
        t = trained_stops[0]
        j, k = t, t + 1
        while k < n and (ids[k] in info.stop_ids or _is_ws(tok, info, ids[k])):
            if ids[k] in info.stop_ids:
                j = k
            k += 1
        run = [i for i in range(t, j + 1) if ids[i] in info.stop_ids and labels[i] != IGNORE]
        if not any(ids[i] in info.generation_eos for i in run):
            gen = ", ".join(_name(tok, g) for g in sorted(info.generation_eos))
            hits.append(Hit("stop-not-generation-eos", ERROR, [t],
                            f"trained stop {_name(tok, ids[t])}; generation stops on {gen}"))
        dup = [b for a, b in zip(run, run[1:]) if ids[a] == ids[b]]
        if dup:
            hits.append(Hit("eos-duplicated", ERROR, [run[0]] + dup,
                            f"{_name(tok, ids[dup[0]])} is trained {len(dup) + 1} times in a row"))
        after = [i for i in trained if i > j]
        if after:
            ws_only = all(_is_ws(tok, info, ids[i]) for i in after)
            text = tok.decode([ids[i] for i in after])
            hits.append(Hit("trained-after-stop", WARNING if ws_only else ERROR, after,
                            f"{len(after)} trained tokens follow {_name(tok, ids[j])}: {text[:60]!r}"))
    elif first_stop is not None and any(start <= i < first_stop for i in trained):
        t = ids[first_stop]
        if pad_masked and t == info.pad_id and t != info.eos_id:
            what = "the end-of-turn token" if t == info.turn_end else "the stop token"
            hits.append(Hit("end-of-turn-is-pad", ERROR, [first_stop],
                            f"{what} {_name(tok, t)} is the pad token; position {first_stop} has label -100"))
        else:
            pad = " (it is the pad token, so the collator masks it)" if pad_masked and t == info.pad_id else ""
            hits.append(Hit("eos-masked", ERROR, [first_stop],
                            f"{_name(tok, t)} at position {first_stop} has label -100{pad}"))
    elif full is not None and _has_trained_stop(info, full[0], full[1], start, n):
        hits.append(Hit("eos-truncated", ERROR, [n - 1],
                        f"max_length={n} cut the sequence of {len(full[0])} tokens before its stop token"))
    elif not split:
        last = trained[-1]
        detail = f"the trained span ends with {_name(tok, ids[last])}"
        if info.role_stops:
            marks = ", ".join(_name(tok, r) for r in sorted(info.role_stops))
            detail += (f"; this template ends a turn with the next role marker ({marks}), which it writes only "
                       "when another turn follows: train it after the reply")
        hits.append(Hit("eos-missing", ERROR, [last], detail))
    return hits


def _squash(text: str) -> str:
    return "".join(text.split())


def _reply_masked_before(tok, ids, labels, trained, end: int, reply: str) -> list[int]:
    """Masked positions that hold the start of the reply, when the decoded trained span lacks it.

    The token boundary comes from the pipeline itself, so this checks it from the text side: a
    generation prompt that swallows the reply's first tokens masks them without any other sign.
    """
    want = _squash(reply)
    first = trained[0]
    if first >= end or not want:
        return []
    if want in _squash(tok.decode([ids[i] for i in range(first, end) if labels[i] != IGNORE])):
        return []
    for k in range(first - 1, max(-1, first - 64), -1):
        if want in _squash(tok.decode(list(ids[k:end]))):
            return [i for i in range(k, first) if labels[i] == IGNORE]
    return []


def _has_trained_stop(info: TokenInfo, ids: Sequence[int], labels: Sequence[int], start: int, cut: int) -> bool:
    return any(ids[i] in info.stop_ids and labels[i] != IGNORE for i in range(max(start, cut), len(ids)))


# Four words or more of prose; short words count ("You are a helpful assistant.").
_WORDS = re.compile(r"\b[A-Za-z]+(?:[ ,.'-]+[A-Za-z]+){3,}")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]{6,}")
_DATE = re.compile(r"\b(?:19|20)\d\d\b|\b\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)")


def injected_text(rendered: str, contents: Sequence[str], special_texts: Iterable[str]) -> str:
    """Text of ``rendered`` that is in no message and looks like prose or a date ('' if none)."""
    rest = rendered
    for c in sorted(set(contents), key=len, reverse=True):
        if c:
            rest = rest.replace(c, "\x00").replace(c.strip() or c, "\x00")
    key = frozenset(special_texts)
    rx = _SPECIAL_RX.get(key)
    if rx is None:
        alts = sorted((s for s in key if s), key=len, reverse=True)
        rx = _SPECIAL_RX[key] = re.compile("|".join(map(re.escape, alts))) if alts else re.compile(r"(?!)")
    rest = rx.sub("\x00", rest)
    for pattern in (_WORDS, _CJK, _DATE):
        m = pattern.search(rest)
        if m:
            line = rest[max(0, m.start() - 10): m.end() + 30].replace("\x00", "…")
            return line.strip()
    return ""


_SPECIAL_RX: dict[frozenset, re.Pattern] = {}
