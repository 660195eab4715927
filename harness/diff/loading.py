"""Which checkpoint class opens a path: a LoRA adapter folder (:mod:`harness.diff.lora`) or plain
weights (:mod:`harness.diff.checkpoint`). Kept apart so that neither module imports the other back."""

from __future__ import annotations

import os
from typing import Optional, Union

from harness.diff.checkpoint import Checkpoint, open_checkpoint, resolve_path
from harness.diff.lora import AdapterCheckpoint


def load_checkpoint(spec: "str | os.PathLike", adapter_base: "Optional[str | os.PathLike]" = None
                    ) -> Union[Checkpoint, AdapterCheckpoint]:
    """Open ``spec`` lazily: a folder, a ``.safetensors`` file, an adapter folder or a hub id."""
    path = resolve_path(spec)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return AdapterCheckpoint(path, adapter_base)
    return open_checkpoint(path)
