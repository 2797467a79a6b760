"""The training loop's optimizer.

- ``adamw``: AdamW with weight decay on matrices and conv kernels only, fused where torch has a
  fused kernel for every parameter.
- ``muon``: Muon (Jordan et al. 2024; ``torch.optim.Muon``) for the weight matrices of the
  model's hidden blocks (its ``shard_units()``), AdamW as above for everything else (embeddings,
  the output head, biases, norms). Muon's step is scaled to AdamW's update size
  (``adjust_lr_fn="match_rms_adamw"``, Liu et al. 2025, "Muon is Scalable for LLM Training"), so
  both take the recipe's one learning rate and schedule.
"""

from __future__ import annotations

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


class MuonAdamW:
    """Muon for the block matrices, AdamW for the rest, stepped together: the optimizer
    interface the loop uses. ``param_groups`` is both parts' groups (the loop sets their
    learning rate); the state dict holds both."""

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig):
        matrices = block_matrices(model)
        self.muon = torch.optim.Muon(
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
