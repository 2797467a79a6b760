"""dVAE evaluation: reconstruction PSNR, codebook usage and perplexity, and, for a dataset with
a fidelity judge, whether the reconstructions still satisfy their captions (they must, or no
transformer trained on these codes can draw what is asked)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from dalle.models.vae import DiscreteVAE


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1], over the whole batch."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def codebook_stats(codes: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Usage (fraction of codes used at least once) and perplexity (exp entropy) of ``codes``."""
    counts = torch.bincount(codes.flatten(), minlength=vocab_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"codebook_usage": (counts > 0).double().mean().item(), "perplexity": math.exp(entropy)}


@torch.no_grad()
def reconstruct(
    vae: DiscreteVAE, images: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and decode ``images`` (N, C, H, W) in batches; returns ``(codes, reconstructions)``."""
    codes, recons = [], []
    for chunk in images.split(batch_size):
        c = vae.encode(chunk)
        codes.append(c)
        recons.append(vae.decode(c))
    return torch.cat(codes), torch.cat(recons)


def evaluate_vae(
    vae: DiscreteVAE,
    images: torch.Tensor,
    captions: list[str] | None = None,
    judge: Callable[[Iterable[tuple[str, torch.Tensor]]], dict] | None = None,
) -> dict:
    """PSNR, codebook usage/perplexity, and with ``captions`` and a ``judge`` (see
    :func:`dalle.eval.fidelity_judge`) the judge's fidelity of the reconstructions."""
    codes, recons = reconstruct(vae, images)
    result: dict = {
        "n": len(images),
        "psnr": psnr(recons, images),
        **codebook_stats(codes, vae.cfg.vocab_size),
    }
    if captions is not None and judge is not None:
        result["fidelity"] = judge(zip(captions, recons, strict=True))
    return result
