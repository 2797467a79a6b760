"""The training loop's optimizer.

- ``adamw``: AdamW with weight decay on matrices and conv kernels only, fused where torch has a
  fused kernel for every parameter.
- ``muon``: Muon (Jordan et al. 2024; ``torch.optim.Muon``) for the weight matrices of the
  model's hidden blocks (its ``shard_units()``), AdamW as above for everything else (embeddings,
  the output head, biases, norms). Muon's step is scaled to AdamW's update size
  (``adjust_lr_fn="match_rms_adamw"``, Liu et al. 2025, "Muon is Scalable for LLM Training"), so
  both take the recipe's one learning rate and schedule. :class:`GroupedMuon` computes
  ``torch.optim.Muon``'s update with one batched Newton-Schulz iteration per matrix shape.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch

from dalle.train.train_config import OptimConfig


def param_groups(
    model: torch.nn.Module, weight_decay: float, exclude: frozenset[int] = frozenset()
) -> list[dict]:
    """Decay matrices and conv kernels; never biases, norms or embeddings. Parameters whose
    ``id`` is in ``exclude`` are left out (another optimizer owns them)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        skip = p.ndim < 2 or "emb" in name or "norm" in name or name.endswith(".b")
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def block_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable 2-D weights of the model's hidden blocks (``shard_units()``): what Muon
    orthogonalises. ValueError for a model without blocks."""
    units = getattr(model, "shard_units", None)
    if units is None:
        name = type(model).__name__
        raise ValueError(f"optimizer 'muon' needs a model with hidden blocks; {name} has none")
    return [p for unit in units() for p in unit.parameters() if p.requires_grad and p.ndim == 2]


def newton_schulz(
    updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """``torch.optim.Muon``'s quintic Newton-Schulz orthogonalisation (in bf16, each matrix
    scaled to unit Frobenius norm, a tall one transposed first) of a stack (N, R, C) of
    matrices of one shape at once."""
    a, b, c = coefficients
    x = updates.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class GroupedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` (same arguments, state and update, bit for bit on the CPU:
    tests/test_optimizer.py) that orthogonalises all its matrices of one shape in one batched
    Newton-Schulz iteration instead of one matrix at a time: for the demo's transformer 4
    shapes instead of 16 matrices, its optimizer step 15.6 -> 10.9 ms on 2 cores (of a
    training step of about 0.13 s)."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("GroupedMuon.step takes no closure")
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            if not params:
                continue
            momentum, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[p.shape].append(i)
            for shape, index in by_shape.items():
                stack = torch.stack([updates[i] for i in index])
                ortho = newton_schulz(stack, group["ns_coefficients"], group["ns_steps"], group["eps"])
                step_lr = lr * _lr_ratio(group["adjust_lr_fn"], shape)
                for j, i in enumerate(index):
                    params[i].mul_(1 - lr * decay)
                    params[i].add_(ortho[j], alpha=-step_lr)


def _lr_ratio(adjust: str | None, shape: torch.Size) -> float:
    """``torch.optim.Muon``'s learning-rate scale of a ``shape`` matrix for ``adjust_lr_fn``."""
    rows, cols = shape[:2]
    if adjust == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust is None or adjust == "original":
        return math.sqrt(max(1, rows / cols))
    return 1.0


class MuonAdamW:
    """Muon for the block matrices, AdamW for the rest, stepped together: the optimizer
    interface the loop uses. ``param_groups`` is both parts' groups (the loop sets their
    learning rate); the state dict holds both."""

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig):
        matrices = block_matrices(model)
        self.muon = GroupedMuon(
            matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"
        )
        self.adamw = adamw(model, cfg, frozenset(id(p) for p in matrices))

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Both parts' groups, read afresh: ``load_state_dict`` replaces a part's group dicts."""
        return self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("the checkpoint's optimizer state is not a Muon + AdamW state")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer | MuonAdamW:
    if cfg.optimizer == "muon":
        return MuonAdamW(model, cfg)
    return adamw(model, cfg)


def adamw(
    model: torch.nn.Module, cfg: OptimConfig, exclude: frozenset[int] = frozenset()
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (less ``exclude``), fused where :func:`fusable`."""
    groups = param_groups(model, cfg.weight_decay, exclude)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fusable(model))


def fusable(model: torch.nn.Module) -> bool | None:
    """``True`` where torch has a fused AdamW for every trainable parameter (floats on the CPU
    or CUDA: one kernel per step instead of a dozen over lists), else ``None`` (its default)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if params and ok else None
