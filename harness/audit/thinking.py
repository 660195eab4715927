"""Reasoning (``<think>``) checks: blocks the template writes into the trained span, and data reasoning it drops.

Qwen3-style templates put an empty ``<think>\\n\\n</think>`` into the final assistant turn and strip
the reasoning of earlier turns. Training on the first teaches the model to answer without
reasoning; the second silently drops reasoning the data holds. Both need a vocabulary with a
``<think>`` token (:attr:`harness.audit.codes.TokenInfo.think_ids`).
"""

from __future__ import annotations

import re
from typing import Optional

from harness.audit.codes import IGNORE, WARNING, Hit, TokenInfo
from harness.audit.pipelines import Trained

_BLOCK = re.compile(r"<think>(.*?)</think>", re.S)


def _messages(rec: dict, side: Optional[str]) -> list[dict]:
    out: list = []
    for key in ("prompt", side or "completion", "messages"):
        v = rec.get(key)
        if isinstance(v, list):
            out += [m for m in v if isinstance(m, dict)]
    return out


def reasonings(rec: dict, side: Optional[str] = None) -> list[str]:
    """The non-empty reasoning texts of the record's assistant messages (``reasoning_content`` or ``<think>``)."""
    out = []
    for m in _messages(rec, side):
        if m.get("role") != "assistant":
            continue
        if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"].strip():
            out.append(m["reasoning_content"].strip())
        out += [b.strip() for b in _BLOCK.findall(str(m.get("content", ""))) if b.strip()]
    return out


def _data_has_think(rec: dict, side: Optional[str]) -> bool:
    return any(m.get("role") == "assistant" and ("reasoning_content" in m or "<think>" in str(m.get("content", "")))
               for m in _messages(rec, side))


def _squash(text: str) -> str:
    return "".join(text.split())


def think_hits(tok, info: TokenInfo, seq: Trained, rec: dict) -> list[Hit]:
    """``think-injected`` and ``think-dropped`` hits of one trained sequence."""
    open_id, close_id = info.think_ids
    if open_id is None:
        return []
    ids, labels = seq.ids, seq.labels
    hits = []
    start = seq.prompt_len or 0
    opened = [i for i in range(start, len(ids)) if ids[i] == open_id and labels[i] != IGNORE]
    if opened and not _data_has_think(rec, seq.side):
        k = opened[0]
        end = next((j for j in range(k, len(ids)) if ids[j] == close_id), k)
        block = tok.decode(ids[k:end + 1])
        inner = tok.decode(ids[k + 1:end]).strip() if end > k else ""
        hits.append(Hit("think-injected", WARNING, list(range(k, end + 1)),
                        f"{'an empty' if not inner else 'a'} block {block!r} at position {k} is trained"))
    wanted = reasonings(rec, seq.side)
    if wanted:
        have = _squash(tok.decode((seq.full or (ids, labels))[0]))
        missing = [r for r in wanted if _squash(r) not in have]
        if missing:
            hits.append(Hit("think-dropped", WARNING, [],
                            f"{len(missing)} of {len(wanted)} reasoning blocks are not in the sequence, "
                            f"e.g. {missing[0][:40]!r}"))
    return hits
