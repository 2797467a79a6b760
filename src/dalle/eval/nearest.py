"""Nearest-neighbour fidelity for any image-caption data: is a generated image closest to the
picture its caption names? Images are compared by L2 distance on ``size`` x ``size`` pixels
(area-averaged), which forgives sampling noise but not a wrong subject or colour.

- :func:`own_rank`: the rank of each prompt's own picture among all reference pictures
  (0 = the nearest); top-1 and top-5 accuracy follow from it.
- :func:`nearest_choice`: which of a few candidates (e.g. an emoji's five skin tones) a
  generated image is nearest to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COMPARE_SIZE = 32


def flatten(images: torch.Tensor, size: int = COMPARE_SIZE) -> torch.Tensor:
    """``(N, C, H, W)`` in [0, 1] -> ``(N, C * size * size)``, area-averaged."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    return F.interpolate(images.float(), size=(size, size), mode="area").flatten(1)


def own_rank(
    generated: torch.Tensor,
    references: torch.Tensor,
    targets: list[int],
    size: int = COMPARE_SIZE,
) -> list[int]:
    """For each generated image ``i``, how many references are strictly nearer to it than its
    own picture ``references[targets[i]]`` (0: its own picture is the nearest)."""
    if len(generated) != len(targets):
        raise ValueError(f"expected one target per generated image, got {len(targets)}")
    dist = torch.cdist(flatten(generated, size), flatten(references, size))  # (G, R)
    own = dist[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)]
    return (dist < own[:, None]).sum(1).tolist()


def top_k(ranks: list[int], k: int) -> float:
    """The fraction of ranks below ``k`` (top-k accuracy)."""
    return sum(r < k for r in ranks) / len(ranks) if ranks else float("nan")


def nearest_choice(
    generated: torch.Tensor, candidates: torch.Tensor, size: int = COMPARE_SIZE
) -> torch.Tensor:
    """``(G,)`` index of the nearest of ``candidates`` ``(G, K, C, H, W)`` for each of the
    ``generated`` images ``(G, C, H, W)``."""
    g, k = candidates.shape[:2]
    flat = flatten(candidates.flatten(0, 1), size).view(g, k, -1)
    return ((flat - flatten(generated, size)[:, None]) ** 2).sum(-1).argmin(1)
