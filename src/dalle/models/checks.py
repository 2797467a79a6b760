"""Input checks shared by the models: each raises a ``ValueError`` that says what was expected."""

from __future__ import annotations

import torch


def check_ids(ids: torch.Tensor, name: str, high: int) -> None:
    """ValueError unless ``ids`` is an integer tensor with values in ``[0, high)``; ``name``
    says what they are ("text ids", "codes")."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"expected integer {name}, got dtype {ids.dtype}")
    if ids.numel() and bool(((ids < 0) | (ids >= high)).any()):
        raise ValueError(
            f"expected {name} in [0, {high}), got values in [{int(ids.min())}, {int(ids.max())}]"
        )
