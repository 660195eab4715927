"""Packed and padding-free batches: which example each token of the collated batch comes from, and the
label/attention bugs of the batch (not of the examples one by one).

trl packs the already labelled examples (``pack_dataset``: ``bfd`` keeps whole examples and cuts the
overflow, ``bfd_split`` moves the overflow into other rows, ``wrapped`` concatenates everything and cuts
every ``max_length`` tokens) and its collator then either pads the rows (an all-ones attention mask per
row: the examples of a row attend to each other) or flattens them into one row whose ``position_ids``
restart at every segment (padding-free: transformers derives the attention segments from them when no
attention mask is given, and trl masks the label of each segment's first token).

The model shifts labels inside its loss: the label at position ``p`` is predicted from position ``p-1``.
A trained label whose ``p-1`` is another example (or another segment) is trained as the continuation
of that other text.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from harness.audit.codes import ERROR, IGNORE, Hit
from harness.errors import HarnessError

#: trl's SFTConfig(packing_strategy=...) values.
STRATEGIES = ("bfd", "bfd_split", "wrapped")

Source = tuple[int, int]  # (example index, token offset in the example's unpacked sequence)


@dataclass(frozen=True)
class Slot:
    """One token of the collated batch, with where it comes from and how the batch trains it."""

    example: int
    offset: int
    row: int  # collated row
    pos: int  # position in that row
    segment: int  # attention segment id (unique over the whole audit)
    trained: bool  # the loss uses this label (not -100, not a row's first position, not padding)
    label: int
    prev: Optional["Slot"]  # the token at pos - 1 of the same row (None at a row's start)


def provenance(rows: Sequence[dict], unpacked: Sequence[Optional[tuple[list[int], list[int]]]],
               strategy: Optional[str], max_length: Optional[int]) -> list[list[Source]]:
    """For every packed row, the (example, offset) of each token.

    ``bfd`` / ``bfd_split`` rows carry ``seq_lengths``: each segment is matched, by its ids, to the example
    piece it copies (an example's prefix, or for ``bfd_split`` a fragment at a multiple of ``max_length``).
    ``wrapped`` rows are the examples' concatenation in order.
    """
    if rows and "seq_lengths" in rows[0]:
        pieces: dict[tuple, deque] = defaultdict(deque)
        step = max_length or 0
        for e, u in enumerate(unpacked):
            if u is None:
                continue
            ids = u[0]
            offsets = range(0, len(ids), step) if strategy == "bfd_split" and step else [0]
            for off in offsets:
                end = off + step if step else len(ids)
                pieces[tuple(ids[off:end])].append((e, off))
        out = []
        for r_no, row in enumerate(rows):
            src: list[Source] = []
            start = 0
            for length in row["seq_lengths"]:
                key = tuple(row["input_ids"][start:start + length])
                if not pieces[key]:
                    raise HarnessError(f"packed row {r_no}: a segment of {length} tokens matches no example "
                                       "(the packing changed the token ids)")
                e, off = pieces[key].popleft()
                src += [(e, off + k) for k in range(length)]
                start += length
            out.append(src)
        return out
    stream = [(e, k) for e, u in enumerate(unpacked) if u is not None for k in range(len(u[0]))]
    flat = [t for u in unpacked if u is not None for t in u[0]]
    out, start = [], 0
    for r_no, row in enumerate(rows):
        n = len(row["input_ids"])
        if row["input_ids"] != flat[start:start + n]:
            raise HarnessError(f"packed row {r_no} is not the examples' concatenation in order "
                               "(the audit prepares the data without shuffling)")
        out.append(stream[start:start + n])
        start += n
    return out


def _tolist(batch: dict, key: str) -> Optional[list]:
    value = batch.get(key)
    return None if value is None else value.tolist()


def layout(batch: dict, rows: Sequence[dict], sources: Sequence[list[Source]], first_segment: int) -> list[Slot]:
    """The slots of one collated batch: a padded batch has one collated row per packed row; a padding-free
    batch flattens them into one row. Attention segments follow transformers: the attention mask's rows
    when the batch has one, else runs of ``position_ids`` that count up by one."""
    ids_b = batch["input_ids"].tolist()
    labels_b = batch["labels"].tolist()
    att_b = _tolist(batch, "attention_mask")
    pos_b = _tolist(batch, "position_ids")
    if len(ids_b) == len(rows):
        expected = [(list(r["input_ids"]), s) for r, s in zip(rows, sources)]
    elif len(ids_b) == 1:
        expected = [([t for r in rows for t in r["input_ids"]], [x for s in sources for x in s])]
    else:
        raise HarnessError(f"the collator made {len(ids_b)} rows of {len(rows)} packed rows: cannot map them back")
    slots: list[Slot] = []
    segment = first_segment
    for row_no, ((want, src), ids, labels) in enumerate(zip(expected, ids_b, labels_b)):
        shift = next((s for s in (0, len(ids) - len(want)) if ids[s:s + len(want)] == want), None)  # right / left pad
        if shift is None:
            raise HarnessError(f"the collator changed the token ids of collated row {row_no}: cannot map them back")
        att = att_b[row_no] if att_b is not None else None
        pos = pos_b[row_no] if pos_b is not None and att is None else None
        prev: Optional[Slot] = None
        for k, (e, off) in enumerate(src):
            p = shift + k
            if k == 0 or (pos is not None and pos[p] != pos[p - 1] + 1):
                segment += 1
            live = att is None or bool(att[p])
            slot = Slot(e, off, row_no, p, segment, labels[p] != IGNORE and p > 0 and live, labels[p], prev)
            slots.append(slot)
            prev = slot
    return slots


def _same_context(s: Slot) -> bool:
    """The token before this one in the batch is its own predecessor in its example, in the same segment."""
    p = s.prev
    return p is not None and p.segment == s.segment and p.example == s.example and p.offset == s.offset - 1


def examine(slots: Sequence[Slot], unpacked: Sequence[Optional[tuple[list[int], list[int]]]], tok: Any,
            ) -> dict[int, tuple[list[int], list[int], list[Hit]]]:
    """Per example: its ids and labels as the batch trains them (its contiguous prefix in the batch, a label
    kept only when the loss uses it) and the batch's findings about it."""
    by_ex: dict[int, list[Slot]] = defaultdict(list)
    for s in slots:
        by_ex[s.example].append(s)
    out: dict[int, tuple[list[int], list[int], list[Hit]]] = {}
    for e, mine in by_ex.items():
        u_ids, u_labels = unpacked[e]  # type: ignore[misc]
        at = {s.offset: s for s in mine}
        n = 0
        while n in at:
            n += 1
        labels = [at[o].label if at[o].trained else IGNORE for o in range(n)]
        hits: list[Hit] = []
        # 1. another example in the same attention segment, before this one
        cross = [s for s in mine if s.prev is not None and s.prev.segment == s.segment and s.prev.example != e]
        if cross:
            others = sorted({s.prev.example for s in cross})  # type: ignore[union-attr]
            hits.append(Hit("packed-cross-attention", ERROR, [s.offset for s in cross],
                            f"example {e} shares an attention segment with example(s) {others[:5]} "
                            f"(collated row {cross[0].row}, position {cross[0].pos})"))
        # 2. a trained label whose context token belongs to another example or segment
        over = [s for s in mine if s.trained and not _same_context(s)]
        if over:
            s = over[0]
            prev = s.prev
            what = (f"the last token {tok.decode([unpacked[prev.example][0][prev.offset]])!r} of example "  # type: ignore
                    f"{prev.example}" if prev is not None and prev.example != e else "another segment")
            hits.append(Hit("packed-label-crosses", ERROR, [x.offset for x in over],
                            f"token {tok.decode([u_ids[s.offset]])!r} (offset {s.offset} of example {e}) is trained "
                            f"as the continuation of {what}"))
        # 3. the example split over several attention segments (rows or fragments)
        cuts = [s.offset for s in mine if s.offset > 0 and not _same_context(s)]
        if cuts and any(lab != IGNORE for lab in u_labels[cuts[0]:]):
            hits.append(Hit("packed-reply-cut", ERROR, cuts,
                            f"example {e} is cut at token {cuts[0]} of {len(u_ids)}: the part after the cut trains "
                            "without the text before it"))
        # 4. the batch trains other tokens than the same example unpacked (masks lost or added)
        gained = [s.offset for s in mine if _same_context(s) and s.trained and u_labels[s.offset] == IGNORE]
        lost = [s.offset for s in mine if _same_context(s) and not s.trained and u_labels[s.offset] != IGNORE]
        if gained or lost:
            hits.append(Hit("batch-mask-changed", ERROR, gained + lost,
                            f"{len(gained)} tokens masked in the prepared labels are trained in the batch, "
                            f"{len(lost)} trained there are masked"))
        out[e] = (list(u_ids[:n]), labels, hits)
    return out
