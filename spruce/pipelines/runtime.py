"""Run-wide choices that every pipeline makes the same way."""

from __future__ import annotations

import torch

from spruce.errors import SpruceError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpruceError(
            f"--device {name} asked for, but no CUDA device is visible", "use --device cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise SpruceError(
            f"--device {name} is not a device name", "use auto, cpu or cuda"
        ) from None
