"""Tensor names: which decoder block and which module a weight belongs to (shared by the engine and
the report, which therefore do not import each other)."""

from __future__ import annotations

import re
from typing import Optional

# Decoder-block naming of the common architectures: model.layers.N., gpt_neox.layers.N.,
# transformer.h.N., model.decoder.layers.N., encoder.layer.N., blocks.N.
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
NUMBERED_RE = re.compile(r"(?:^|\.)(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    """The decoder-block index in a tensor name, or ``None`` outside the blocks."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_of(name: str) -> str:
    """The module type of a tensor: ``...self_attn.q_proj.weight`` -> ``q_proj``."""
    parts = [p for p in name.split(".") if p not in ("weight", "bias")]
    return parts[-1] if parts else name
