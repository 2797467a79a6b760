"""Step-indexed schedules: learning-rate warm-up + cosine decay, and cosine ramps for
hyper-parameters such as the dVAE's gumbel temperature and KL weight (paper App. A.2)."""

from __future__ import annotations

import math


def cosine_ramp(step: int, steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``steps`` along a half cosine; ``end`` afterwards."""
    if steps <= 0 or step >= steps:
        return end
    t = max(step, 0) / steps
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return cosine_ramp(step - warmup, max(total - warmup, 1), 1.0, min_ratio)
