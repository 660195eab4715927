"""Multi-turn conversations and tool turns: which assistant turns (text and end-of-turn) and which tool
results a pipeline trains.

Each message is found in the rendered conversation (the template's text for the record, with its own
``tools`` / ``chat_template_kwargs``) by its content, or for an assistant turn that only calls tools, by
the first tool's name; the tokenizer's offsets map it to token positions. An assistant turn's text runs
from its content to the first stop token after it (tool calls included); that stop token is its
end-of-turn. Conversations with one assistant turn and no tool message are left to the other detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from harness.audit.codes import ERROR, IGNORE, Hit, TokenInfo

#: What ``train_turns`` may state: no intent (None), only the last assistant turn, or every assistant turn.
TRAIN_TURNS = (None, "last", "all")


@dataclass(frozen=True)
class Turn:
    """One located message of a conversation and how the sequence trains it."""

    message: int  # index in the conversation
    role: str
    text: tuple[int, ...]  # token positions of its text (assistant: up to its end-of-turn)
    stop: Optional[int]  # position of its end-of-turn token (assistant), None if none or cut
    final: bool  # the conversation's last message

    def trained(self, labels: Sequence[int]) -> list[int]:
        return [i for i in self.text if labels[i] != IGNORE]

    def stop_trained(self, labels: Sequence[int]) -> Optional[bool]:
        return None if self.stop is None else labels[self.stop] != IGNORE


def conversation(rec: dict, side: Optional[str]) -> Optional[list[dict]]:
    """The messages the sequence renders (prompt + completion / chosen / rejected), or None for text."""
    if isinstance(rec.get("messages"), list):
        return rec["messages"]
    if isinstance(rec.get("prompt"), list):
        rest = rec.get(side or "completion")
        return rec["prompt"] + rest if isinstance(rest, list) else None
    return None


def _content(m: dict) -> str:
    c = m.get("content")
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c if isinstance(c, str) else ""


def _needle(m: dict) -> str:
    text = _content(m).strip()
    if text:
        return text
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
    return ""


def locate(tok, info: TokenInfo, msgs: list[dict], ids: Sequence[int], kwargs: dict) -> Optional[list[Turn]]:
    """The assistant and tool messages of ``msgs`` as token positions of ``ids`` (None when the rendered
    conversation is not what the sequence holds, or the tokenizer gives no offsets)."""
    try:
        text = tok.apply_chat_template(msgs, tokenize=False, **kwargs)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # noqa: BLE001 - slow tokenizers have no offsets; a failing template is reported elsewhere
        return None
    full, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    n = len(ids)
    if not n or full[:n] != list(ids):
        return None
    spans: list[Optional[tuple[int, int]]] = []
    cursor = 0
    for m in msgs:
        needle = _needle(m)
        k = text.find(needle, cursor) if needle else -1
        if k < 0:
            spans.append(None)
            continue
        spans.append((k, k + len(needle)))
        cursor = k + len(needle)

    def tokens(a: int, b: int) -> list[int]:
        return [i for i, (x, y) in enumerate(offsets) if x < b and y > a]

    turns = []
    for j, (m, span) in enumerate(zip(msgs, spans)):
        role = m.get("role")
        if span is None or role not in ("assistant", "tool"):
            continue
        toks = tokens(*span)
        if not toks:
            continue
        if role == "tool":
            turns.append(Turn(j, role, tuple(i for i in toks if i < n), None, j == len(msgs) - 1))
            continue
        nxt = next((s[0] for s in spans[j + 1:] if s is not None), len(text))
        limit = next((i for i, (x, _) in enumerate(offsets) if x >= nxt), len(full))
        stop = next((i for i in range(toks[-1] + 1, limit) if full[i] in info.stop_ids), None)
        end = stop if stop is not None else toks[-1] + 1
        text_pos = tuple(i for i in range(toks[0], end) if i < n)
        turns.append(Turn(j, role, text_pos, stop if stop is not None and stop < n else None, j == len(msgs) - 1))
    return turns


def _merge(hits: list[Hit], code: str, positions: list[int], detail: str) -> None:
    for h in hits:
        if h.code == code:
            h.positions += positions
            h.detail += "; " + detail
            return
    hits.append(Hit(code, ERROR, positions, detail))


def turn_hits(tok, info: TokenInfo, seq: Any, rec: dict, kwargs: dict, intent: Optional[str],
              hits: list[Hit]) -> list[Hit]:
    """``hits`` with the findings about the conversation's turns added (and, when every assistant turn is
    meant to be trained, earlier turns no longer counted as trained prompt). Sets ``seq.turns``."""
    msgs = conversation(rec, seq.side)
    if not msgs:
        return hits
    n_asst = sum(1 for m in msgs if m.get("role") == "assistant")
    if n_asst < 2 and not any(m.get("role") == "tool" for m in msgs):
        return hits
    turns = locate(tok, info, msgs, seq.ids, kwargs)
    if turns is None:
        return hits
    seq.turns = turns
    labels = seq.labels
    new: list[Hit] = []
    numbers = {j: k + 1 for k, j in enumerate(j for j, m in enumerate(msgs) if m.get("role") == "assistant")}
    for t in turns:
        trained = t.trained(labels)
        if t.role == "tool":
            if trained:
                _merge(new, "tool-result-trained", trained,
                       f"message {t.message}: {len(trained)} of {len(t.text)} tokens")
            continue
        if t.final:
            continue  # the completion: the EOS / masking detectors judge it
        name = f"assistant turn {numbers[t.message]} of {n_asst} (message {t.message})"
        stop = t.stop_trained(labels)
        if trained and stop is False:
            _merge(new, "turn-stop-masked", [t.stop], f"{name}: {tok.decode([seq.ids[t.stop]])!r} masked")  # type: ignore[list-item]
        if not trained and stop:
            _merge(new, "turn-stop-only", [t.stop], f"{name}: {tok.decode([seq.ids[t.stop]])!r} trained")  # type: ignore[list-item]
        if intent == "last" and trained:
            _merge(new, "turn-trained", trained, f"{name}: {len(trained)} of {len(t.text)} tokens")
        if intent == "all" and not trained:
            _merge(new, "turn-masked", list(t.text), f"{name}: its {len(t.text)} tokens")
    if intent == "all":
        meant = {i for t in turns if t.role == "assistant" for i in t.text + ((t.stop,) if t.stop is not None else ())}
        kept = []
        for h in hits:
            if h.code == "prompt-trained":
                left = [i for i in h.positions if i not in meant]
                if not left:
                    continue
                h = Hit(h.code, h.severity, left, f"{len(left)} prompt tokens outside the assistant turns are trained")
            kept.append(h)
        hits = kept
    return hits + new


def turn_notes(pipeline: str, audited: Sequence[Any]) -> list[str]:
    """One line per pipeline (and side) saying which assistant turns and tool results are trained."""
    groups: dict[Optional[str], list] = {}
    for a in audited:
        if getattr(a.seq, "turns", None):
            groups.setdefault(a.seq.side, []).append(a.seq)
    out = []
    for side, seqs in groups.items():
        final = earlier = final_n = earlier_n = stops = tools = tools_n = 0
        for s in seqs:
            for t in s.turns:
                hit = bool(t.trained(s.labels))
                if t.role == "tool":
                    tools_n += 1
                    tools += hit
                elif t.final:
                    final_n += 1
                    final += hit
                else:
                    earlier_n += 1
                    earlier += hit
                    stops += bool(t.stop_trained(s.labels))
        where = f"{pipeline}{' ' + side if side else ''}"
        out.append(f"{where} trains the text of {final}/{final_n} final and {earlier}/{earlier_n} earlier assistant "
                   f"turns ({stops}/{earlier_n} earlier end-of-turn tokens) and {tools}/{tools_n} tool results")
    return out
