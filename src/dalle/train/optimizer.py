"""The training loop's optimizer: AdamW with weight decay on matrices and conv kernels only,
fused where torch has a fused kernel for every parameter."""

from __future__ import annotations

import torch

from dalle.train.train_config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels; never biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "emb" in name or "norm" in name or name.endswith(".b")
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fusable(model))


def fusable(model: torch.nn.Module) -> bool | None:
    """``True`` where torch has a fused AdamW for every trainable parameter (floats on the CPU
    or CUDA: one kernel per step instead of a dozen over lists), else ``None`` (its default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if params and ok else None
