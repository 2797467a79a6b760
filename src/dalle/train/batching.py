"""What the training loop asks of a batch of any structure (a tensor, or tensors and lists
nested in tuples, lists and dicts): how many samples it holds, and a copy on a device."""

from __future__ import annotations

from typing import Any

import torch


def batch_len(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor or list (0 when it has none)."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()), [])
    if isinstance(batch, tuple) and batch:
        return batch_len(batch[0])
    return len(batch) if isinstance(batch, (torch.Tensor, list)) else 0


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
