"""The recipe sections of a plan (LoRA, SFT/DPO trainer settings, the tiny base, the base's source) and
the type-checking that turns a TOML table into one of them.

Every section is a frozen dataclass; :func:`apply_table` sets a table's keys on one (each key known, each
value of the field's type) and validates the result. Errors are :class:`PlanError` naming the file and
the field. :mod:`harness.train.plan` builds plans, nodes and variants from these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Mapping

from harness.errors import LoadError

SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts")


class PlanError(LoadError):
    """A plan file is malformed; the message names the file and the field."""


class FrozenDict(dict):
    """A read-only dict that pickles (plans travel to build worker processes)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("plan tables are read-only; use Plan.variant() or dataclasses.replace()")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


def freeze(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return FrozenDict({k: freeze(v) if isinstance(v, dict) else v for k, v in d.items()})


@dataclass(frozen=True)
class LoraSpec:
    """peft ``LoraConfig`` settings."""

    r: int = 8
    alpha: int = 128
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class Recipe:
    """One trainer's settings (SFT or DPO). ``max_steps`` -1 means "run ``epochs``"; 0 trains nothing."""

    epochs: float = 3.0
    batch_size: int = 2
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    optimizer: str = "adamw_torch"  # weight decay 0: plain Adam, as the seed
    warmup_ratio: float = 0.0
    max_steps: int = -1
    max_length: int = 128
    logging_steps: int = 1
    gradient_accumulation_steps: int = 1
    beta: float = 0.3  # DPO only
    precompute_ref_log_probs: bool = False  # DPO only; the same loss, one reference pass
    precompute_ref_batch_size: int = 0  # DPO only; 0: the training batch. The pass is forward-only, so larger is fine
    # "auto": on for models of about 1B parameters and up (common.is_big); "on" / "off" force it.
    # Only a non-default value enters the node key (keys of existing plans stay as they were).
    gradient_checkpointing: str = "auto"
    # GPUs one node trains on (DDP through accelerate launch, harness.train.distributed); batch_size is
    # the global batch, split over them. Only a value above 1 enters the node key.
    gpus: int = 1
    # torch.compile the training step (inductor), every batch padded to max_length so that one compiled
    # graph serves every step. The same loss; the kernels are fused differently, so it enters the node key.
    # true: torch's default mode; a string: one of COMPILE_MODES ("reduce-overhead" replays CUDA graphs).
    compile: bool | str = False
    # SFT only, a negative control: the collator masks the label of every stop token (label -100), as study 004's
    # pad == EOS collator did to EOS, so the node never learns to stop. Only true enters the node key.
    mask_stop_labels: bool = False


@dataclass(frozen=True)
class TinySpec:
    """The tiny default base: tokenizer size, Llama shape and pretraining schedule."""

    vocab_size: int = 3000
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    pretrain_max_steps: int = 1500
    pretrain_min_steps: int = 200
    pretrain_batch_size: int = 16
    pretrain_seq_len: int = 96
    pretrain_learning_rate: float = 3e-3
    pretrain_eval_every: int = 50
    pretrain_flat_tolerance: float = 0.01  # stop when the held-out loss improves less than 1 %, twice
    pretrain_seed: int = 0
    # The saved base's dtype (pretraining runs in float32). "bfloat16" mirrors the study's bf16
    # checkpoints: merged children are bf16 too, so LoRA updates under half an ulp vanish.
    dtype: str = "float32"


@dataclass(frozen=True)
class BaseSource:
    """Where a non-tiny base comes from besides ``base.model``, and what the plan adds to it.

    ``offline`` is a GGUF file (``$HARNESS_GGUF_DIR`` expands, default ``~/.cache/harness/gguf``)
    used when the hub id ``offline_for`` is neither reachable nor cached; ``sha256`` pins a GGUF
    file. ``chat_template`` (a Jinja file) and ``stop_tokens`` (the generation config's EOS tokens)
    overlay the base; both enter every key.
    """

    offline: str | None = None
    offline_for: str | None = None
    sha256: str | None = None
    chat_template: str | None = None
    stop_tokens: tuple[str, ...] = ()


# ---------------------------------------------------------------------- tables into sections

def check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise PlanError(f"{where}: unknown field {key!r}; known: {', '.join(sorted(allowed))}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_option(value: Any, where: str) -> bool | str:
    """``compile``: true, false or a torch.compile mode; "default" is the same as true (and the same key)."""
    if isinstance(value, bool):
        return value
    if value not in COMPILE_MODES:
        raise PlanError(f"{where}: must be true or false, or a torch.compile mode ({', '.join(COMPILE_MODES)}), "
                        f"got {value!r}")
    return True if value == "default" else value


def typed(value: Any, kind: type, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise PlanError(f"{where}: must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PlanError(f"{where}: must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise PlanError(f"{where}: must be a string, got {value!r}")
    if kind is float and not isinstance(value, float):
        raise PlanError(f"{where}: must be a number, got {value!r}")
    return value


def apply_table(obj: Any, table: Mapping[str, Any], where: str) -> Any:
    """A copy of dataclass ``obj`` with ``table``'s keys set, each type-checked."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    check_keys(table, set(fields), where)
    kw = {}
    for key, value in table.items():
        default = getattr(obj, key)
        if key == "target_modules":
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                value = tuple(value)
            elif not isinstance(value, str):
                raise PlanError(f"{where}.{key}: must be a string or a list of strings, got {value!r}")
        elif key == "compile":
            value = _compile_option(value, f"{where}.{key}")
        else:
            value = typed(value, type(default), f"{where}.{key}")
        kw[key] = value
    new = replace(obj, **kw)
    _validate_section(new, where)
    return new



def _validate_section(obj: Any, where: str) -> None:
    if isinstance(obj, Recipe):
        for key in ("batch_size", "max_length", "logging_steps", "gradient_accumulation_steps"):
            if getattr(obj, key) < 1:
                raise PlanError(f"{where}.{key}: must be at least 1, got {getattr(obj, key)}")
        if obj.learning_rate <= 0:
            raise PlanError(f"{where}.learning_rate: must be positive, got {obj.learning_rate}")
        if obj.epochs <= 0:
            raise PlanError(f"{where}.epochs: must be positive, got {obj.epochs}")
        if obj.max_steps < -1:
            raise PlanError(f"{where}.max_steps: must be -1 (use epochs), 0 or more, got {obj.max_steps}")
        if obj.lr_scheduler not in SCHEDULERS:
            raise PlanError(f"{where}.lr_scheduler: unknown {obj.lr_scheduler!r}; known: {', '.join(SCHEDULERS)}")
        if obj.beta <= 0:
            raise PlanError(f"{where}.beta: must be positive, got {obj.beta}")
        if obj.gpus < 1 or obj.batch_size % obj.gpus:
            raise PlanError(f"{where}.gpus: must be at least 1 and divide batch_size ({obj.batch_size}) so the "
                            f"global batch stays the same, got {obj.gpus}")
        if obj.precompute_ref_batch_size < 0:
            raise PlanError(f"{where}.precompute_ref_batch_size: must be 0 (the training batch) or more, got "
                            f"{obj.precompute_ref_batch_size}")
        if obj.gradient_checkpointing not in ("auto", "on", "off"):
            raise PlanError(f"{where}.gradient_checkpointing: must be auto, on or off, got {obj.gradient_checkpointing!r}")
    elif isinstance(obj, LoraSpec):
        if obj.r < 1 or obj.alpha <= 0:
            raise PlanError(f"{where}: r and alpha must be positive, got r={obj.r} alpha={obj.alpha}")
        if not 0 <= obj.dropout < 1:
            raise PlanError(f"{where}.dropout: must lie in [0, 1), got {obj.dropout}")
    elif isinstance(obj, TinySpec):
        if obj.dtype not in ("float32", "bfloat16", "float16"):
            raise PlanError(f"{where}.dtype: must be float32, bfloat16 or float16, got {obj.dtype!r}")
        if obj.hidden_size % obj.num_attention_heads:
            raise PlanError(f"{where}.hidden_size: {obj.hidden_size} is not divisible by num_attention_heads")
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.name not in ("pretrain_seed", "dtype") and v <= 0:
                raise PlanError(f"{where}.{f.name}: must be positive, got {v}")
