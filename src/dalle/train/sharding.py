"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the loop.

Under ``--shard`` each rank keeps only its ``1/N`` slice of every parameter, its gradient and
its AdamW moments. The units are the model's :meth:`shard_units` (a model without that method
is one unit), each all-gathered just before its forward and backward and freed after, and the
root unit holds the rest (embeddings, head, norms). With ``bf16`` precision the gathered
parameters are cast to bf16 for the computation while the shards, the optimizer and the
gradient reduction stay fp32.

The model the caller passed stays outside the sharding: :class:`Sharded` trains a copy, and
the caller's model (on the CPU of rank 0, on the meta device elsewhere) receives the full
weights, gathered to rank 0, whenever a callback is due and after the last step, so the
loop's callbacks (model folders, snapshots) and the caller see plain full weights. Only rank
0 needs real weights to start from: the other ranks may build their model on the meta device
(``with torch.device("meta")``, nothing allocated); the copy is made on the meta device,
sharded there, and its shards are filled from rank 0's weights by one broadcast.

Training checkpoints of a sharded run are written by every rank at once with
``torch.distributed.checkpoint`` (DCP): one folder per step beside the loop's small
checkpoint file, which names it and is written last (so a folder without it is an unfinished
write and never read). DCP re-shards on load, so a run may resume on another number of ranks.
"""

from __future__ import annotations

import copy
import itertools
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from dalle.train import distributed


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s structure and attributes with every parameter and buffer on the meta
    device: a copy that allocates nothing."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = (
            torch.nn.Parameter(empty, t.requires_grad)
            if isinstance(t, torch.nn.Parameter)
            else empty
        )
    return copy.deepcopy(model, memo)


class Sharded:
    """``objective`` over a sharded copy of ``model``: :attr:`module` is what a step calls,
    :attr:`model` the sharded copy the optimizer updates, :attr:`host` the caller's model."""

    def __init__(self, model: torch.nn.Module, objective: Any, bf16: bool):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.device = device
        mesh = init_device_mesh(device.type, (distributed.world_size(),))
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
        )
        self.host = model
        self.model = meta_copy(model)
        units = model.shard_units() if hasattr(model, "shard_units") else []
        copies = dict(self.model.named_modules())
        names = {id(m): n for n, m in model.named_modules()}
        for unit in units:
            fully_shard(copies[names[id(unit)]], mesh=mesh, mp_policy=policy)
        self.module = fully_shard(
            distributed.ObjectiveModule(self.model, objective), mesh=mesh, mp_policy=policy
        )
        self.module.to_empty(device=device)
        self._fill_from_rank0()
        # The caller's copy is no longer trained: rank 0 keeps it (on the CPU) for the full
        # weights, the other ranks free it.
        model.to("cpu" if distributed.is_main() else "meta")

    def _fill_from_rank0(self) -> None:
        """Rank 0's weights into every rank's shards, and its buffers (the non-persistent
        ones, e.g. attention masks, are in no state dict) into every rank's copy."""
        main = distributed.is_main()
        full = self.host.state_dict() if main else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(self.model, full, options=options)
        hosts = dict(self.host.named_buffers())
        for name, buffer in self.model.named_buffers():
            if main:
                buffer.copy_(hosts[name])
            torch.distributed.broadcast(buffer, src=0)

    def accumulating(self, on: bool) -> None:
        """``on``: the next backward passes only add to the local gradients (no reduction),
        for all but the last batch of an accumulated step."""
        self.module.set_requires_gradient_sync(not on)

    def gather(self) -> None:
        """Put the full weights into the caller's model on rank 0 (every rank must call)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.model, options=options)
        if distributed.is_main():
            self.host.load_state_dict(full)

    def save(self, opt: torch.optim.Optimizer, folder: Path) -> None:
        """This rank's shards of the model and optimizer into ``folder`` (every rank calls)."""
        model_state, optim_state = get_state_dict(self.model, opt)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))

    def load(self, opt: torch.optim.Optimizer, folder: Path) -> None:
        """The model and optimizer from a sharded checkpoint folder (every rank calls)."""
        model_state, optim_state = get_state_dict(self.model, opt)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(
            self.model,
            opt,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )


def shard_folder(checkpoint: Path) -> Path:
    """The DCP folder that belongs to the loop's checkpoint file ``step_N.pt``."""
    return checkpoint.with_suffix(".shards")


def remove_orphans(folder: Path) -> None:
    """Delete shard folders whose checkpoint file is gone (pruned, or a write that never
    finished)."""
    for shards in folder.glob("step_*.shards"):
        if not shards.with_suffix(".pt").exists():
            shutil.rmtree(shards, ignore_errors=True)
