"""Image completion (Ramesh et al. 2021, Sec. 3.3 and Figure 2): which code rows of a picture a
call keeps, and those rows repeated for every image to draw. The pipeline samples the rest."""

from __future__ import annotations

import math
import numbers

import torch

from dalle.sampler_settings import SettingError

DEFAULT_KEEP = 0.5  # with an image and no keep_rows: its top half


def rows_kept(keep_rows: int | float | None, grid: int, image: bool = True) -> int | None:
    """The code rows to keep of an image ``grid`` rows high: ``keep_rows`` rows (an int, 0 to
    ``grid``), or a fraction of the image height (a float in [0, 1], rounded to the nearest
    row, halves up: 0.5 of 5 rows keeps 3); ``None`` keeps :data:`DEFAULT_KEEP` of it. Without
    an ``image`` nothing is kept (``None``). A bad value is a :class:`SettingError` naming
    ``keep_rows``."""
    if not image:
        if keep_rows is not None:
            raise SettingError(
                "keep_rows", f"needs an image to keep the rows of, got {keep_rows!r}"
            )
        return None
    k = DEFAULT_KEEP if keep_rows is None else keep_rows
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        pass
    elif isinstance(k, numbers.Integral) and 0 <= k <= grid:
        return int(k)
    elif not isinstance(k, numbers.Integral) and math.isfinite(k) and 0 <= k <= 1:
        return math.floor(k * grid + 0.5)
    raise SettingError(
        "keep_rows", f"must be 0..{grid} code rows (an int) or a fraction of the image height "
        f"in [0, 1] (a float), got {keep_rows!r}",
    )  # fmt: skip


def repeat_prime(
    prime: torch.Tensor | None, prompts: int, num_images: int, device: torch.device
) -> torch.Tensor | None:
    """``prime`` (1 or P, k) -> one row per image ``(P * num_images, k)`` on ``device``;
    ``None`` when nothing is kept (so that zero rows sample exactly as no prime)."""
    if prime is None:
        return None
    if prime.ndim != 2 or prime.shape[0] not in (1, prompts):
        raise ValueError(
            f"expected prime codes of shape (1 or {prompts}, r * grid): one row for all "
            f"prompts or one per prompt, got {tuple(prime.shape)}"
        )
    if prime.shape[1] == 0:
        return None
    prime = prime.expand(prompts, -1) if prime.shape[0] == 1 else prime
    return prime.repeat_interleave(num_images, dim=0).to(device)
