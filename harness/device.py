"""One device resolver for every engine: ``auto`` is CUDA when torch sees one, else the CPU."""

from __future__ import annotations

from harness.errors import HarnessError


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` (or ``cuda:N``) without one is an error."""
    import torch

    if not isinstance(device, str) or not (device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:")):
        raise HarnessError(f"unknown device {device!r}; known: auto, cpu, cuda, cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"device {device!r} was asked for but torch sees no CUDA device")
    return device
