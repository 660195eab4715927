"""The training pipelines the audit runs: trl's own SFT and DPO preparation, and plain causal LM.

Nothing here tokenizes for trl. ``trl-sft`` and ``trl-dpo`` build the installed trl's
``SFTTrainer`` / ``DPOTrainer`` on a throwaway one-layer Llama sized to the tokenizer, let
the trainer's own ``_prepare_dataset`` tokenize and label the records, and run the trainer's
own ``data_collator`` on the result. ``hf-clm`` is the plain recipe of transformers:
``tokenizer(text)`` (or the chat template) and ``DataCollatorForLanguageModeling(mlm=False)``.
Trainers are cached per tokenizer object, record kind and ``max_length``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Callable, Iterator, Optional, Sequence

from harness.errors import HarnessError, PipelineError
from harness.registry import Registry

IGNORE = -100
INDEX_COLUMN = "_audit_idx"
BATCH = 64
HASH_FINGERPRINTS = False  # True: let datasets hash the tokenizer on every map (the benchmark's baseline)
#: Per-record fields trl 1.x's SFT and DPO ``tokenize_fn`` forward to ``apply_chat_template``:
#: ``tools`` (a JSON string is parsed) and ``**chat_template_kwargs``.
TEMPLATE_FIELDS = ("tools", "chat_template_kwargs")
#: Pipelines that render chat records with those per-record fields (hf-clm is the plain recipe: it does not).
READS_TEMPLATE_FIELDS = frozenset({"trl-sft", "trl-dpo"})
#: Pipelines whose collator gives every pad-id position label -100 (transformers'
#: DataCollatorForLanguageModeling); trl's collators pad the labels with -100 and mask no token id.
MASKS_PAD = frozenset({"hf-clm"})
#: Packages whose frames in a traceback make an exception the pipeline's (not the audit's own bug).
LIBRARIES = frozenset({"trl", "transformers", "datasets", "jinja2", "tokenizers", "json"})


@dataclass
class Trained:
    """One sequence exactly as the pipeline trains it, with the audit's reference boundary."""

    index: int
    side: Optional[str]  # "chosen" / "rejected" for DPO
    ids: list[int]
    labels: list[int]
    prompt_len: Optional[int] = None  # where the reference says the completion starts
    ref_prompt_len: Optional[int] = None  # length of the prompt tokenized alone
    full: Optional[tuple[list[int], list[int]]] = None  # untruncated ids/labels, when truncated
    dropped: bool = False  # the pipeline dropped the example (it trains nothing)
    extra: list = field(default_factory=list)  # codes.Hit found in the collated batch (packing / padding-free)
    turns: Optional[list] = None  # turns.Turn of a multi-turn / tool conversation, once located


@dataclass
class Job:
    """What a pipeline needs: the tokenizer, trl-format records and the truncation length."""

    tok: object
    records: list[dict]  # trl records: text | prompt/completion | messages | prompt/chosen/rejected
    max_length: Optional[int]
    ref_prompts: list[Optional[list[int]]]  # reference prompt ids per record (None: unknown)
    assistant_only_loss: bool = False  # SFTConfig(assistant_only_loss=True): {% generation %} masks
    packing: Optional[str] = None  # SFTConfig(packing=True, packing_strategy=...); None: no packing
    padding_free: bool = False  # SFTConfig(padding_free=True)
    collator: Optional[Callable] = None  # the user's data_collator for SFTTrainer (None: trl's own)
    completion_only_loss: Optional[bool] = None  # SFTConfig(completion_only_loss=...); None: trl's default

    @property
    def batched(self) -> bool:
        """The collated batch itself is audited (packing, padding-free or the user's collator)."""
        return self.packing is not None or self.padding_free or self.collator is not None


PIPELINES: Registry[Callable[[Job], list[Trained]]] = Registry("pipeline")
_TRAINERS: dict[tuple, tuple[object, object]] = {}


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence datasets' progress bars and transformers/trl chatter while a pipeline runs."""
    import datasets
    import transformers

    import datasets.arrow_dataset as arrow_dataset
    import datasets.fingerprint as fingerprint

    was_on = datasets.is_progress_bar_enabled()
    level = transformers.logging.get_verbosity()
    # The audit's datasets live in memory (Dataset.from_list) and write no cache files, so their
    # fingerprints name nothing; computing them pickles the whole tokenizer on every map (seconds
    # for a 256k vocabulary). A random fingerprint is what datasets itself uses when hashing fails.
    hashers = fingerprint.update_fingerprint, arrow_dataset.update_fingerprint
    if not HASH_FINGERPRINTS:
        fingerprint.update_fingerprint = arrow_dataset.update_fingerprint = _random_fingerprint
    trl_logger = logging.getLogger("trl")
    trl_level = trl_logger.level
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    trl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        fingerprint.update_fingerprint, arrow_dataset.update_fingerprint = hashers
        if was_on:
            datasets.enable_progress_bars()
        transformers.logging.set_verbosity(level)
        trl_logger.setLevel(trl_level)


def _random_fingerprint(*_args, **_kwargs) -> str:
    from datasets.fingerprint import generate_random_fingerprint

    return generate_random_fingerprint()


def _tiny_model(tok):
    """A one-layer, hidden-8 Llama whose vocabulary fits the tokenizer: the trainers need a model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=max(len(tok), 8), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


_OUTPUT_DIR: list[str] = []


def _output_dir() -> str:
    """One scratch folder per process for the throwaway trainers (nothing is saved; removed at exit)."""
    if not _OUTPUT_DIR:
        import atexit
        import shutil

        _OUTPUT_DIR.append(tempfile.mkdtemp(prefix="harness-audit-"))
        atexit.register(shutil.rmtree, _OUTPUT_DIR[0], True)
    return _OUTPUT_DIR[0]


def _common_args() -> dict:
    return dict(output_dir=_output_dir(), report_to=[], use_cpu=True,
                save_strategy="no", logging_strategy="no", per_device_train_batch_size=BATCH, max_steps=0)


def default_max_length(kind: str) -> Optional[int]:
    """trl's own default ``max_length`` of SFTConfig / DPOConfig (what a user gets by not setting it)."""
    from trl import DPOConfig, SFTConfig

    cls = SFTConfig if kind == "sft" else DPOConfig
    return cls.__dataclass_fields__["max_length"].default


def _trainer(kind: str, job: Job, first: list[dict], max_length: Optional[int]):
    """The cached trl trainer for this tokenizer, record kind and max_length.

    trl's errors propagate (:func:`pipeline_error` turns them into one line naming the record)."""
    key = (kind, id(job.tok), tuple(sorted(first[0])), max_length, job.assistant_only_loss, job.packing,
           job.padding_free, id(job.collator), job.completion_only_loss)
    hit = _TRAINERS.get(key)
    if hit is not None and hit[0] is job.tok:
        return hit[1]
    from datasets import Dataset

    ds = Dataset.from_list(first)
    old_pad = job.tok.pad_token  # the trainers set pad = eos on the tokenizer; it is put back below
    try:
        if kind == "sft":
            from trl import SFTConfig, SFTTrainer

            pack = dict(packing=True, packing_strategy=job.packing) if job.packing else {}
            args = SFTConfig(**_common_args(), max_length=max_length, shuffle_dataset=False,
                             assistant_only_loss=job.assistant_only_loss, padding_free=job.padding_free,
                             completion_only_loss=job.completion_only_loss, **pack)
            trainer = SFTTrainer(model=_tiny_model(job.tok), args=args, train_dataset=ds, processing_class=job.tok,
                                 data_collator=job.collator)
        else:
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(**_common_args(), max_length=max_length)
            trainer = DPOTrainer(model=_tiny_model(job.tok), ref_model=_tiny_model(job.tok), args=args,
                                 train_dataset=ds, processing_class=job.tok)
    finally:
        if old_pad is None:
            job.tok.pad_token = None
    if len(_TRAINERS) > 32:
        _TRAINERS.clear()
    _TRAINERS[key] = (job.tok, trainer)
    return trainer


def clear_cache() -> None:
    """Forget the cached throwaway trainers."""
    _TRAINERS.clear()


def _indexed(records: list[dict], indices: Optional[Sequence[int]] = None) -> list[dict]:
    idx = range(len(records)) if indices is None else indices
    return [{**r, INDEX_COLUMN: i} for i, r in zip(idx, records)]


def template_kwargs(records: Sequence[dict]) -> list[dict]:
    """The per-record keyword arguments trl passes to ``apply_chat_template`` for each record.

    The records go through ``Dataset.from_list`` first, as they do on their way to trl: its columns are
    the first record's keys, and a struct column fills the keys other records have with null.
    """
    keys = [k for k in TEMPLATE_FIELDS if records and k in records[0]]
    if not keys:
        return [{} for _ in records]
    from datasets import Dataset

    rows = Dataset.from_list([{k: r.get(k) for k in keys} for r in records]).to_list()
    out = []
    for i, row in enumerate(rows):
        tools, extra = row.get("tools"), row.get("chat_template_kwargs", {})
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except json.JSONDecodeError as e:
                raise PipelineError(f"example {i}: field 'tools' is a string but not JSON ({e})",
                                    example=i) from None
        if not isinstance(extra, Mapping):
            raise PipelineError(
                f"example {i}: field 'chat_template_kwargs' is {'null' if extra is None else type(extra).__name__}, "
                "not an object (trl spreads it into apply_chat_template; a record without it, when others have it, "
                "gets null from datasets: give every record the field, {} when empty)", example=i)
        out.append({"tools": tools, **extra})
    return out


def _frames(tb: Optional[TracebackType]) -> Iterator:
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def failing_example(exc: BaseException) -> Optional[int]:
    """The audit index of the record trl was preparing when it raised (its ``example`` in the innermost
    frame that holds one), or None."""
    found = None
    for frame in _frames(exc.__traceback__):
        ex = frame.f_locals.get("example")
        if isinstance(ex, Mapping) and INDEX_COLUMN in ex:
            value = ex[INDEX_COLUMN]
            if isinstance(value, int) and not isinstance(value, bool):  # one record, not a whole column
                found = value
    return found


def from_library(exc: BaseException) -> bool:
    """True when the traceback runs through trl, transformers, datasets, jinja2 or tokenizers code."""
    return any(str(f.f_globals.get("__name__", "")).split(".")[0] in LIBRARIES for f in _frames(exc.__traceback__))


def _one_line(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(exc).__name__}: {text}"


def pipeline_error(pipeline: str, exc: BaseException, example: Optional[int] = None) -> Optional[PipelineError]:
    """One line for an error the pipeline raised while preparing the data (None: not the pipeline's).

    The record is ``example`` or the one trl was preparing; without one the error is the setup's."""
    if isinstance(exc, HarnessError) or not from_library(exc):
        return None
    if example is None:
        example = failing_example(exc)
    if example is None:
        return PipelineError(f"{pipeline} rejected this setup: {_one_line(exc)}", pipeline)
    return PipelineError(f"{pipeline} failed on example {example}: {_one_line(exc)}", pipeline, example)


def _collate(pipeline: str, collator, features: list[dict], indices: Sequence[int]) -> dict:
    """The collator on one chunk; an error names the record that makes it fail."""
    try:
        return collator(features)
    except Exception as e:  # noqa: BLE001 - only the pipeline's own errors are turned into one line
        for feature, i in zip(features, indices):
            try:
                collator([feature])
            except Exception as one:  # noqa: BLE001
                err = pipeline_error(pipeline, one, i)
                if err is not None:
                    raise err from None
                raise
        err = pipeline_error(pipeline, e)
        if err is None:
            raise
        raise err from None


def _chunks(rows: list, n: int = BATCH) -> Iterator[list]:
    for k in range(0, len(rows), n):
        yield rows[k:k + n]


def _sft_prepare(trainer, job: Job, records: list[dict], max_length: Optional[int],
                 indices: Optional[Sequence[int]] = None, packing: bool = False) -> list[dict]:
    from datasets import Dataset

    args = trainer.args
    if max_length != args.max_length:
        args = copy.copy(args)
        args.max_length = max_length
    ds = trainer._prepare_dataset(Dataset.from_list(_indexed(records, indices)), job.tok, args, packing, None, "audit")
    if packing:  # pack_dataset keeps input_ids and labels (and seq_lengths for bfd), not the record index
        return ds.select_columns([c for c in ("input_ids", "labels", "seq_lengths") if c in ds.column_names]).to_list()
    return ds.select_columns([INDEX_COLUMN, "input_ids", "labels"]).to_list()


def _trl_sft_batched(job: Job) -> list[Trained]:
    """trl-sft with packing, padding-free or a user collator: the examples as the collated batch trains them.

    The examples are prepared once unpacked (no truncation: the reference labels, and where each token comes
    from) and once as trl packs them; the packed rows go through the trainer's collator in chunks."""
    from harness.audit import packing as P

    if job.padding_free and not job.packing:
        ml = job.max_length  # trl refuses padding_free with a max_length and no packing: it truncates nothing
    else:
        ml = job.max_length if job.max_length is not None else default_max_length("sft")
    trainer = _trainer("sft", job, _indexed(job.records[:1]), ml)
    unpacked_rows = _sft_prepare(trainer, job, job.records, None)
    unpacked: list = [None] * len(job.records)
    for r in unpacked_rows:
        unpacked[r[INDEX_COLUMN]] = (r["input_ids"], r["labels"])
    if job.packing:
        rows = _sft_prepare(trainer, job, job.records, ml, packing=True)
        sources = P.provenance(rows, unpacked, job.packing, ml)
    else:
        prepared = unpacked_rows if ml is None else _sft_prepare(trainer, job, job.records, ml)
        rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in prepared]
        sources = [[(r[INDEX_COLUMN], k) for k in range(len(r["input_ids"]))] for r in prepared]
    slots: list = []
    for k in range(0, len(rows), BATCH):
        chunk, src = rows[k:k + BATCH], sources[k:k + BATCH]
        batch = _collate("trl-sft", trainer.data_collator, chunk, [s[0][0] if s else -1 for s in src])
        slots += P.layout(batch, chunk, src, slots[-1].segment + 1 if slots else 0)
    seen = P.examine(slots, unpacked, job.tok)
    out = []
    for i, u in enumerate(unpacked):
        if i not in seen or u is None:
            out.append(Trained(i, None, [], [], dropped=True))
            continue
        ids, labels, hits = seen[i]
        seq = Trained(i, None, ids, labels, extra=hits)
        if len(ids) < len(u[0]):
            seq.full = (u[0], u[1])
        out.append(seq)
    return out


@PIPELINES.register("trl-sft")
def trl_sft(job: Job) -> list[Trained]:
    """trl's SFTTrainer: its dataset preparation, then its data collator."""
    if job.batched:
        with quiet():
            result = _trl_sft_batched(job)
        _set_boundaries(result, job)
        return result
    ml = job.max_length if job.max_length is not None else default_max_length("sft")
    with quiet():
        trainer = _trainer("sft", job, _indexed(job.records[:1]), ml)
        rows = _sft_prepare(trainer, job, job.records, ml)
        out: dict[int, Trained] = {}
        for chunk in _chunks(rows):
            batch = _collate("trl-sft", trainer.data_collator,
                             [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in chunk],
                             [r[INDEX_COLUMN] for r in chunk])
            for r, ids, labels in zip(chunk, batch["input_ids"].tolist(), batch["labels"].tolist()):
                n = len(r["input_ids"])
                out[r[INDEX_COLUMN]] = Trained(r[INDEX_COLUMN], None, ids[:n], labels[:n])
        if ml is not None:
            cut = [i for i in range(len(job.records)) if i not in out or len(out[i].ids) >= ml]
            if cut:
                full = _sft_prepare(trainer, job, [job.records[i] for i in cut], None, cut)
                for r, i in zip(full, cut):
                    if i in out and len(r["input_ids"]) > len(out[i].ids):
                        out[i].full = (r["input_ids"], r["labels"])
    result = [out.get(i) or Trained(i, None, [], [], dropped=True) for i in range(len(job.records))]
    _set_boundaries(result, job)
    return result


@PIPELINES.register("trl-dpo")
def trl_dpo(job: Job) -> list[Trained]:
    """trl's DPOTrainer: its dataset preparation, then DataCollatorForPreference; one sequence per side."""
    from datasets import Dataset

    with quiet():
        ml = job.max_length if job.max_length is not None else default_max_length("dpo")
        trainer = _trainer("dpo", job, _indexed(job.records[:1]), ml)
        ds = trainer._prepare_dataset(Dataset.from_list(_indexed(job.records)), job.tok, trainer.args, "audit")
        rows = ds.select_columns([INDEX_COLUMN, "prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
        out: dict[tuple[int, str], Trained] = {}
        for chunk in _chunks(rows):
            batch = _collate("trl-dpo", trainer.data_collator,
                             [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in chunk],
                             [r[INDEX_COLUMN] for r in chunk])
            ids_all = batch["input_ids"].tolist()
            att = batch["attention_mask"].tolist()
            cmask = batch["completion_mask"].tolist()
            for row_no, (ids, a, c) in enumerate(zip(ids_all, att, cmask)):
                r = chunk[row_no % len(chunk)]
                side = "chosen" if row_no < len(chunk) else "rejected"
                n = sum(a)
                labels = [t if m else IGNORE for t, m in zip(ids[:n], c[:n])]
                full_ids = r["prompt_ids"] + r[f"{side}_ids"]
                seq = Trained(r[INDEX_COLUMN], side, ids[:n], labels)
                if len(full_ids) > n:
                    seq.full = (full_ids, [IGNORE] * len(r["prompt_ids"]) + r[f"{side}_ids"])
                out[(seq.index, side)] = seq
    result = [out.get((i, s)) or Trained(i, s, [], [], dropped=True)
              for i in range(len(job.records)) for s in ("chosen", "rejected")]
    _set_boundaries(result, job)
    return result


@PIPELINES.register("hf-clm")
def hf_clm(job: Job) -> list[Trained]:
    """Plain causal LM: the tokenizer (or its chat template), then transformers' DataCollatorForLanguageModeling.

    Like the usual recipe, a tokenizer without a pad token gets ``pad_token = eos_token``.
    """
    from transformers import DataCollatorForLanguageModeling

    tok = job.tok
    had_pad = tok.pad_token is not None
    if not had_pad:
        tok.pad_token = tok.eos_token  # put back below: the caller's tokenizer is left as it was
    try:
        return _hf_clm(job, DataCollatorForLanguageModeling(tokenizer=tok, mlm=False))
    finally:
        if not had_pad:
            tok.pad_token = None


def _hf_clm(job: Job, collator) -> list[Trained]:
    tok = job.tok
    full_ids = []
    for i, r in enumerate(job.records):
        try:
            full_ids.append(_clm_ids(tok, r))
        except Exception as e:  # noqa: BLE001 - the template's or tokenizer's error, named by its record
            err = pipeline_error("hf-clm", e, i)
            if err is None:
                raise
            raise err from None
    cut = job.max_length
    out: list[Trained] = []
    with quiet():
        for start in range(0, len(full_ids), BATCH):
            chunk = full_ids[start:start + BATCH]
            batch = _collate("hf-clm", collator, [{"input_ids": ids[:cut] if cut else ids} for ids in chunk],
                             range(start, start + len(chunk)))
            for k, (ids, labels, att) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                                      batch["attention_mask"].tolist())):
                keep = [p for p, m in enumerate(att) if m]
                seq = Trained(start + k, None, [ids[p] for p in keep], [labels[p] for p in keep])
                if cut and len(chunk[k]) > cut:
                    pad = tok.pad_token_id
                    seq.full = (chunk[k], [IGNORE if t == pad else t for t in chunk[k]])
                out.append(seq)
    _set_boundaries(out, job)
    return out


def _clm_ids(tok, rec: dict) -> list[int]:
    if "messages" in rec:
        return list(tok.apply_chat_template(rec["messages"], tokenize=True, return_dict=True)["input_ids"])
    if "prompt" in rec:
        if isinstance(rec["prompt"], list):
            msgs = rec["prompt"] + rec["completion"]
            return list(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
        return list(tok(rec["prompt"] + rec["completion"])["input_ids"])
    if "text" in rec:
        return list(tok(rec["text"])["input_ids"])
    raise HarnessError("hf-clm needs text, prompt/completion or messages records, not preference pairs")


def _set_boundaries(seqs: list[Trained], job: Job) -> None:
    for s in seqs:
        ref = job.ref_prompts[s.index]
        if ref is None or s.dropped:
            continue
        s.ref_prompt_len = len(ref)
        s.prompt_len = common_prefix_length(ref, s.ids)
