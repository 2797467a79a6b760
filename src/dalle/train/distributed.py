"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc-per-node N -m dalle train ...`` sets ``WORLD_SIZE``, ``RANK`` and the
rendezvous variables; :func:`setup` joins the process group (gloo on CPU, NCCL on GPU). Every
rank draws the same global batch (the batch iterators are seeded alike) and keeps its own
contiguous slice, so no sample is seen twice and the data position is one number for all
ranks. The objective runs inside PyTorch's ``DistributedDataParallel`` (:func:`data_parallel`),
whose bucketed all-reduces average the gradients while the backward pass is still running,
which makes a step equal to a single process's step on the whole global batch (for
objectives without per-sample randomness). Only rank 0 logs, saves and checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def setup() -> int:
    """Join the process group when launched by ``torchrun``; returns the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world_size()


def teardown() -> None:
    """Leave the process group (every rank, at exit): a rank that exits while it still holds
    one may abort in the communication threads' destructors."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files."""
    return rank() == 0


def shard(batch: Any, index: int, count: int) -> Any:
    """Slice ``index`` of ``count`` equal contiguous slices of a batch along its first
    dimension; tensors, lists, tuples and dicts are sliced element by element."""
    if isinstance(batch, dict):
        return {k: shard(v, index, count) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(shard(v, index, count) for v in batch)
    if isinstance(batch, (torch.Tensor, list)):
        n = len(batch)
        if n % count:
            raise ValueError(f"a batch of {n} does not split evenly over {count} processes")
        size = n // count
        return batch[index * size : (index + 1) * size]
    raise ValueError(f"cannot split a batch element of type {type(batch).__name__}")


class ObjectiveModule(torch.nn.Module):
    """``objective(model, batch, step)`` as a module: DDP must see the forward pass the
    objective runs, and an objective may call any of the model's methods, not only its
    ``forward``."""

    def __init__(self, model: torch.nn.Module, objective: Any):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Any, step: int) -> Any:
        return self.objective(self.model, batch, step)


def data_parallel(model: torch.nn.Module, objective: Any) -> torch.nn.Module:
    """The module a training step calls: ``objective`` over ``model``, inside
    ``DistributedDataParallel`` when there are several ranks (its gradients then arrive
    averaged over them)."""
    module = ObjectiveModule(model, objective)
    if world_size() == 1:
        return module
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (so every rank skips a bad step together)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t)
    return int(t) == 0


def fewest(n: int, device: torch.device) -> int:
    """The smallest of every rank's ``n`` (so the ranks agree on a re-planned step count)."""
    if world_size() == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()
