"""Teacher-forced ``P(stop | reply)``: how much probability a model puts on its stop tokens right after a
trained reply.

Each SFT record (trl prompt/completion or messages) is rendered and tokenized by trl's own SFT
preparation (the audit's ``trl-sft`` pipeline, :mod:`harness.audit.pipelines`), so the sequence is the one
training sees. In the completion part, the first stop token (:func:`harness.inference.generate.stop_token_ids`:
the tokenizer's EOS, the generation config's EOS ids, the special end-of-turn tokens) is where the model
should end; one batched forward pass reads the softmax at the position before it, and sums the mass on
the stop-token set. A rendered turn that holds no stop token (a template that does not close the turn with
one, or an EOS written as text pieces: study 004's other setups) is read after its last token, where
generation would have to stop; such replies are counted (``unended``). A pipeline that never trains the stop label (study 004's pad == EOS collator) leaves
this near 0; one that trains it drives it toward 1, whatever greedy decoding then does.

Greedy decoding of a small model can fall into repetition loops before it reaches the stop token, so
this, not the greedy stop rate, says whether the stop token was learned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from harness.errors import HarnessError

#: Bumped when the measurement changes what a cached file would hold.
CACHE_VERSION = 2


@dataclass(frozen=True)
class StopProbs:
    """Per measured record: P(stop) at the reply's end, and whether a stop token was the argmax there."""

    probs: tuple[float, ...]
    argmax_stop: tuple[bool, ...]
    skipped: int = 0  # records the pipeline dropped (nothing trained, nothing to read)
    stop_ids: tuple[int, ...] = field(default=())
    unended: int = 0  # replies whose rendered turn holds no stop token: read after the turn's last token

    @property
    def n(self) -> int:
        return len(self.probs)

    @property
    def mean(self) -> float:
        if not self.probs:
            raise HarnessError("P(stop | reply): no record to read (every one was dropped by the pipeline)")
        return sum(self.probs) / len(self.probs)

    @property
    def min(self) -> float:
        return min(self.probs) if self.probs else float("nan")

    @property
    def argmax_share(self) -> float:
        return sum(self.argmax_stop) / len(self.argmax_stop) if self.argmax_stop else float("nan")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("probs", "argmax_stop", "stop_ids"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StopProbs":
        return cls(tuple(float(x) for x in d["probs"]), tuple(bool(x) for x in d["argmax_stop"]),
                   int(d.get("skipped", 0)), tuple(int(x) for x in d.get("stop_ids", ())), int(d.get("unended", 0)))

    def describe(self) -> str:
        return (f"P(stop | reply) over {self.n} trained replies: mean {self.mean:.3g}, min {self.min:.3g}, "
                f"stop token the argmax at {self.argmax_share:.0%}"
                + (f"; {self.unended} rendered with no stop token after the reply (read after the turn)"
                   if self.unended else "")
                + (f"; {self.skipped} dropped by the pipeline (left out)" if self.skipped else ""))


def stop_positions(records: Sequence[dict], tokenizer: Any, stops: Sequence[int],
                   max_length: Optional[int] = None) -> tuple[list[list[int]], list[int], int, int]:
    """``(ids, position, skipped, unended)``: each record as trl's SFT preparation tokenizes it (up to its
    first stop token), and the index of the token whose logits predict that stop token: the first stop token
    of the completion, else (``unended``) the token after the whole rendered turn. Records the pipeline
    dropped are ``skipped``."""
    from harness.audit.pipelines import IGNORE, PIPELINES, Job

    job = Job(tokenizer, [dict(r) for r in records], max_length, [None] * len(records))
    seqs = PIPELINES.get("trl-sft")(job)
    stop_set = {int(s) for s in stops}
    ids_out: list[list[int]] = []
    pos: list[int] = []
    skipped = unended = 0
    for s in seqs:
        start = next((i for i, lab in enumerate(s.labels) if lab != IGNORE), None)
        if s.dropped or start is None:
            skipped += 1
            continue
        j = next((i for i in range(max(start, 1), len(s.ids)) if s.ids[i] in stop_set), None)
        if j is None:
            unended += 1
            ids_out.append(list(s.ids))
            pos.append(len(s.ids) - 1)
            continue
        ids_out.append(list(s.ids[: j + 1]))
        pos.append(j - 1)
    return ids_out, pos, skipped, unended


@torch.inference_mode()
def stop_probs(model: Any, tokenizer: Any, records: Sequence[dict], *, stops: Sequence[int] | None = None,
               batch_size: int = 16, max_length: Optional[int] = None) -> StopProbs:
    """P(stop | reply) for each record (see the module docstring), batched and right-padded."""
    from harness.inference.generate import stop_token_ids

    stops = list(stops) if stops is not None else stop_token_ids(tokenizer, model)
    ids, pos, skipped, unended = stop_positions(records, tokenizer, stops, max_length)
    dev = next(model.parameters()).device
    stop_idx = torch.tensor(stops, device=dev)
    probs: list[float] = []
    argmax: list[bool] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    for k in range(0, len(ids), batch_size):
        chunk, at = ids[k:k + batch_size], pos[k:k + batch_size]
        width = max(len(x) for x in chunk)
        inp = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, x in enumerate(chunk):
            inp[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        logits = model(input_ids=inp.to(dev), attention_mask=mask.to(dev)).logits
        rows = logits[torch.arange(len(chunk), device=dev), torch.tensor(at, device=dev)].float()
        p = torch.softmax(rows, dim=-1)
        probs += p[:, stop_idx].sum(-1).tolist()
        argmax += torch.isin(p.argmax(-1), stop_idx).tolist()
    return StopProbs(tuple(probs), tuple(bool(a) for a in argmax), skipped, tuple(stops), unended)


def cache_file(root: Path, model_key: str, records: Sequence[dict], tokenizer: Any, label: str = "") -> Path:
    """Where a measurement of ``model_key`` on ``records`` with ``tokenizer``'s template is cached."""
    blob = json.dumps({"v": CACHE_VERSION, "model": model_key, "records": list(records),
                       "template": getattr(tokenizer, "chat_template", None)},
                      ensure_ascii=False, sort_keys=True, default=str)
    h = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return Path(root) / "stopprob" / f"{safe}-{h}.json"


def cached_stop_probs(model_dir: Path, model_key: str, records: Sequence[dict], cache_root: Optional[Path], *,
                      tokenizer: Any = None, device: str = "auto", label: str = "") -> StopProbs:
    """:func:`stop_probs` of the model in ``model_dir`` (with ``tokenizer``, default the folder's), cached under
    ``cache_root/stopprob/`` by the model's key, the records and the chat template; written atomically."""
    from harness.atomic import write_json
    from harness.inference.generate import cpu_threads, load_model

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    path = cache_file(cache_root, model_key, records, tokenizer, label) if cache_root is not None else None
    if path is not None and path.is_file():
        try:
            return StopProbs.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: measure again and overwrite
    model, _ = load_model(model_dir, device)
    with cpu_threads(model, 1):
        result = stop_probs(model, tokenizer, records)
    if path is not None:
        write_json(path, result.to_json())
    return result
