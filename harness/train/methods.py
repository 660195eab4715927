"""The training methods a plan node may name (``method = "sft"``), as data: one registry entry each.

An entry says what the method trains on and how: the records it takes (``kind``: ``sft`` conversational
prompt/completion, ``dpo`` preference prompt/chosen/rejected), the plan recipe section that configures it,
the trainer function (imported only when a node trains), the pre-flight pipeline its records go through
and whether it trains over several GPUs (DDP). Adding a method is one trainer module and one entry here.

>>> get("orpo").section, get("orpo").kind
('dpo', 'dpo')
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from harness.registry import Registry


@dataclass(frozen=True)
class Method:
    """One training method. ``trainer`` and ``records`` are ``"module:function"`` names, loaded on use.

    ``trainer(model_dir, tokenizer, records, recipe, out_dir, device, *, lora, quantize_4bit, seed, progress)``
    trains and saves a node (see :func:`harness.train.common.run_recipe`); ``records(dataset, seed=...)``
    gives a built-in dataset's records for it. The base has neither: it is made, not trained.
    """

    name: str
    kind: str | None  # the records it trains on: "sft" or "dpo" (harness.userdata, harness.inference.selfgen)
    section: str | None  # the plan's recipe section ([sft] or [dpo]) that configures it
    trainer: str | None
    records: str | None
    preflight: tuple[str, str] | None  # (audit pipeline, record format) of harness.audit
    ddp: bool  # may train over several GPUs (recipe gpus = N > 1)

    def train_function(self) -> Callable[..., Any]:
        """The method's trainer (imports it)."""
        return _load(self.trainer, self.name)

    def builtin_records(self, dataset: str, seed: int, folder: Any = None) -> list[dict]:
        """The records of built-in dataset ``dataset`` (d0, d1, d2) in this method's format, read from ``folder``
        (default: the packaged fixtures/data)."""
        return _load(self.records, self.name)(dataset, seed=seed, folder=folder)


def _load(target: str | None, method: str) -> Callable[..., Any]:
    from harness.errors import HarnessError

    if target is None:
        raise HarnessError(f"method {method!r} is not trained; it has no trainer or records")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


METHODS: Registry[Method] = Registry("training method")

METHODS.add("base", Method("base", None, None, None, None, None, ddp=False))
METHODS.add("sft", Method("sft", "sft", "sft", "harness.train.sft:train_sft", "harness.data:sft_records",
                          ("trl-sft", "conversational"), ddp=True))
METHODS.add("dpo", Method("dpo", "dpo", "dpo", "harness.train.dpo:train_dpo", "harness.data:dpo_records",
                          ("trl-dpo", "preference"), ddp=True))
# ORPO (trl.experimental.orpo): preference records, the [dpo] section (its beta is ORPO's lambda); no
# reference model. Its prompt/chosen/rejected tokenisation is DPO's, so the DPO audit pipeline checks it.
METHODS.add("orpo", Method("orpo", "dpo", "dpo", "harness.train.orpo:train_orpo", "harness.data:dpo_records",
                           ("trl-dpo", "preference"), ddp=False))


def get(name: str) -> Method:
    """The method registered as ``name``; an unknown name raises naming the known ones."""
    return METHODS.get(name)


def names() -> list[str]:
    return METHODS.names()


def sections() -> list[str]:
    """The plan recipe sections the methods use (``sft``, ``dpo``)."""
    return sorted({m.section for m in (get(n) for n in names()) if m.section})
