"""PEFT LoRA adapters as checkpoints ("the base plus the adapter"), and factored deltas.

``ΔW = scale · B @ A`` with ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` for rsLoRA).
The L2 of a LoRA delta comes from the factors, ``‖BA‖²_F = Σ (BᵀB) ⊙ (AAᵀ)``, without
materialising it; the other statistics materialise row blocks (:meth:`LoraDelta.rows`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from harness.diff.checkpoint import Checkpoint, open_checkpoint, read_header, resolve_path
from harness.errors import LoadError

PREFIX = "base_model.model."
UNSUPPORTED_CONFIG = ("use_dora", "layer_replication", "use_qalora", "lora_bias",
                      "trainable_token_indices", "alora_invocation_tokens")


@dataclass
class LoraDelta:
    """A factored delta ``scale · B @ A`` laid out like the weight it updates.

    ``A`` is ``(r, in)``, ``B`` is ``(out, r)``; with ``fan_in_fan_out`` (GPT-2's Conv1D) the
    weight is stored ``(in, out)`` and the delta is transposed.
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    fan_in_fan_out: bool = False

    @property
    def shape(self) -> tuple:
        out, inn = self.B.shape[0], self.A.shape[1]
        return (inn, out) if self.fan_in_fan_out else (out, inn)

    def to(self, device) -> "LoraDelta":
        return LoraDelta(self.A.to(device), self.B.to(device), self.scale, self.fan_in_fan_out)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of the materialised delta, in the weight's layout, as fp32.

        The product is taken in float64 and rounded once to fp32, on every device: an fp32 matmul on CUDA
        may run in TF32 (10 mantissa bits) when anything in the process turned it on (transformers does
        for a compiled trainer), which moved a CUDA diff's statistics 4e-4 off the CPU engine's."""
        A, B = self.A.double(), self.B.double()
        if self.fan_in_fan_out:
            return ((A[:, r0:r1].T @ B.T) * self.scale).float()
        return ((B[r0:r1] @ A) * self.scale).float()

    def materialize(self) -> torch.Tensor:
        return self.rows(0, self.shape[0])

    def minus(self, other: "LoraDelta") -> "LoraDelta":
        """``self - other`` as one factored delta of rank r1 + r2 (scale folded into B)."""
        if self.fan_in_fan_out != other.fan_in_fan_out or self.shape != other.shape:
            raise LoadError(f"LoRA deltas of shapes {self.shape} and {other.shape} do not align")
        B = torch.cat([self.B.double() * self.scale, -other.B.double() * other.scale], dim=1)
        A = torch.cat([self.A.double(), other.A.double()], dim=0)
        return LoraDelta(A, B, 1.0, self.fan_in_fan_out)

    def sumsq(self) -> float:
        """``‖ΔW‖²_F`` from the factors, in float64: ``scale² Σ (BᵀB) ⊙ (AAᵀ)``."""
        A, B = self.A.double(), self.B.double()
        return float((B.T @ B * (A @ A.T)).sum()) * self.scale ** 2

    def l2(self) -> float:
        return math.sqrt(max(self.sumsq(), 0.0))

    def dot(self, other: "LoraDelta") -> float:
        """Frobenius inner product ``<ΔW₁, ΔW₂>`` from the factors."""
        A1, B1, A2, B2 = self.A.double(), self.B.double(), other.A.double(), other.B.double()
        return float((B1.T @ B2 * (A1 @ A2.T)).sum()) * self.scale * other.scale


def sumsq_many(deltas: list[LoraDelta]) -> list[float]:
    """``‖ΔW‖²_F`` of many deltas from their factors, batched by factor shape (float64).

    Deltas of one shape are stacked and reduced with two batched matmuls, so a whole model's
    adapter (hundreds of modules, a handful of shapes) costs a few kernel launches.
    """
    groups: dict = {}
    for i, d in enumerate(deltas):
        groups.setdefault((tuple(d.A.shape), tuple(d.B.shape), d.A.device), []).append(i)
    out = [0.0] * len(deltas)
    for idx in groups.values():
        A = torch.stack([deltas[i].A for i in idx]).double()
        B = torch.stack([deltas[i].B for i in idx]).double()
        scale = torch.tensor([deltas[i].scale for i in idx], dtype=torch.float64, device=A.device)
        sums = ((B.transpose(1, 2) @ B) * (A @ A.transpose(1, 2))).sum(dim=(1, 2)) * scale ** 2
        for i, v in zip(idx, sums.tolist()):
            out[i] = v
    return out


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches a module name suffix (regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class AdapterCheckpoint:
    """A PEFT LoRA adapter folder read as its base checkpoint plus the adapter's deltas."""

    is_adapter = True

    def __init__(self, folder: Path, adapter_base: "Optional[str | os.PathLike]" = None) -> None:
        self.label = str(folder)
        cfg_path = folder / "adapter_config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError as exc:
            raise LoadError(f"unreadable adapter config {cfg_path}: {exc}") from None
        ptype = str(cfg.get("peft_type", "LORA")).upper()
        if ptype != "LORA":
            raise LoadError(f"unsupported adapter variant in {folder}: peft_type={ptype} "
                            "(only LoRA adapters are supported)")
        bad = [k for k in UNSUPPORTED_CONFIG if cfg.get(k)]
        if bad:
            raise LoadError(f"unsupported adapter variant in {folder}: {', '.join(bad)} is set "
                            "(plain LoRA and rsLoRA are supported)")
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise LoadError(f"no adapter_model.safetensors in adapter folder {folder}")
        base_spec = adapter_base or cfg.get("base_model_name_or_path")
        if not base_spec:
            raise LoadError(f"adapter {folder} names no base model; pass --adapter-base")
        base_path = resolve_path(base_spec)
        if base_path.is_dir() and (base_path / "adapter_config.json").is_file():
            raise LoadError(f"the base {base_spec} of adapter {folder} is itself an adapter")
        self.base: Checkpoint = open_checkpoint(base_path)
        self.adapter_file = str(weights)
        self.use_rslora = bool(cfg.get("use_rslora", False))
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        self._deltas: dict[str, LoraDelta] = {}
        self._replaced: dict[str, torch.Tensor] = {}
        self._load(cfg, folder, str(base_spec))

    def _load(self, cfg: dict, folder: Path, base_spec: str) -> None:
        header = read_header(self.adapter_file)
        from safetensors.torch import load_file

        tensors = load_file(self.adapter_file)  # adapters are small
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key in header:
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            m = re.match(r"^(.*)\.(lora_A|lora_B)\.weight$", name)
            if m:
                factors.setdefault(m.group(1), {})[m.group(2)] = tensors[key]
            elif "lora_" in name:
                raise LoadError(f"unsupported adapter variant in {folder}: tensor {key!r} "
                                "(embedding LoRA, DoRA and LoRA biases are not supported)")
            elif name in self.base.tensors:
                self._check_shape(folder, base_spec, name, tuple(tensors[key].shape))
                self._replaced[name] = tensors[key]  # modules_to_save: a full copy
            else:
                raise LoadError(f"adapter {folder} does not match its base {base_spec}: "
                                f"the base has no tensor {name!r}")
        alpha = cfg.get("lora_alpha", 8)
        for module, pair in sorted(factors.items()):
            if set(pair) != {"lora_A", "lora_B"}:
                raise LoadError(f"adapter {folder}: module {module!r} lacks "
                                f"{({'lora_A', 'lora_B'} - set(pair)).pop()}")
            A, B = pair["lora_A"], pair["lora_B"]
            if A.dim() != 2 or B.dim() != 2:
                raise LoadError(f"unsupported adapter variant in {folder}: {module!r} has "
                                f"{A.dim()}-d LoRA factors (convolution LoRA is not supported)")
            target = module + ".weight"
            if target not in self.base.tensors:
                raise LoadError(f"adapter {folder} does not match its base {base_spec}: the "
                                f"base has no tensor {target!r}")
            r = A.shape[0]
            a = _pattern_value(cfg.get("alpha_pattern"), module, alpha)
            scale = a / math.sqrt(r) if self.use_rslora else a / r
            delta = LoraDelta(A, B, float(scale), self.fan_in_fan_out)
            self._check_shape(folder, base_spec, target, delta.shape)
            self._deltas[target] = delta

    def _check_shape(self, folder, base_spec, name: str, shape: tuple) -> None:
        want = self.base.shape(name)
        if tuple(want) != tuple(shape):
            raise LoadError(f"adapter {folder} does not match its base {base_spec}: tensor "
                            f"{name!r} is {tuple(want)} in the base but {tuple(shape)} in the adapter")

    # -- the checkpoint interface ------------------------------------------------------------
    @property
    def tensors(self):
        return self.base.tensors

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple:
        return self.base.shape(name)

    def info(self, name: str):
        return self.base.info(name)

    def raw(self, name: str) -> torch.Tensor:
        """The stored base tensor (or the adapter's full copy of it), without the delta."""
        if name in self._replaced:
            return self._replaced[name]
        return self.base.raw(name)

    def rows(self, name: str, r0: int, r1: int, buf: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``r0:r1`` of the stored base tensor (2-D view), without the delta."""
        if name in self._replaced:
            t = self._replaced[name]
            return t.reshape(t.shape[0] if t.dim() else 1, -1)[r0:r1]
        return self.base.rows(name, r0, r1, buf)

    def delta(self, name: str) -> Optional[LoraDelta]:
        return self._deltas.get(name)

    def replaced(self, name: str) -> bool:
        return name in self._replaced

    def close(self) -> None:
        self.base.close()

    def __repr__(self) -> str:
        return f"AdapterCheckpoint({self.label!r}, {len(self._deltas)} LoRA deltas)"
