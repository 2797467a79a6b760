"""Data-dependent starts for the dVAE: k-means codebooks of pixel patches (flat, or a gain-shape
product of patterns and colours) for the warm start, and a k-means++ init of the encoder's
logit layer for the paper's objective alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dalle.config import VAEConfig
from dalle.models.vae import DiscreteVAE
from dalle.train.train_config import VAETrainConfig


def image_patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B * H/size * W/size, C * size * size)``, patches in raster order."""
    b, c, _, _ = images.shape
    p = images.unfold(2, size, size).unfold(3, size, size)  # (B, C, h, w, size, size)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


def kmeans_plus_plus(
    points: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> list[int]:
    """Indices of ``k`` seeds among ``points`` (N, D) by k-means++: each next seed is drawn
    with probability proportional to its squared distance from the nearest seed so far."""
    picks = [int(torch.randint(len(points), (1,), generator=generator))]
    d2 = ((points - points[picks[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        total = d2.sum()
        p = d2 / total if total > 0 else torch.full_like(d2, 1 / len(d2))
        picks.append(int(torch.multinomial(p, 1, generator=generator)))
        d2 = torch.minimum(d2, ((points - points[picks[-1]]) ** 2).sum(1))
    return picks


def nearest(points: torch.Tensor, centres: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """The index of the nearest centre ``(N,)`` of each of ``points`` (N, D), ``chunk`` rows at
    a time: a full (N, K) distance matrix of a large codebook would not fit in memory."""
    return torch.cat([torch.cdist(part, centres).argmin(dim=1) for part in points.split(chunk)])


def kmeans(
    points: torch.Tensor,
    k: int,
    iters: int,
    generator: torch.Generator | None = None,
    plus_plus: bool = False,
) -> torch.Tensor:
    """Lloyd's k-means of ``points`` (N, D) from ``k`` random points (or k-means++ seeds); an
    empty cluster restarts at a random point. Returns the centres ``(k, D)``."""
    if len(points) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(points)}")
    if plus_plus:
        centres = points[kmeans_plus_plus(points, k, generator)].clone()
    else:
        centres = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = nearest(points, centres)  # (N,)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        restart = points[torch.randint(len(points), (k,), generator=generator)]
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], restart)
    return centres


def patch_codebook(
    images: torch.Tensor, cfg: VAETrainConfig, vae: DiscreteVAE, generator: torch.Generator
) -> torch.Tensor:
    """k-means centres ``(K, C * d * d)`` of the ``d x d`` pixel patches (d = the dVAE's
    downsampling) of ``images``; for a product codebook, see :func:`product_patch_codebook`.
    Flat patches are thinned to a quarter of the others so that an empty background does not
    take most of the codebook."""
    if vae.cfg.palette:
        return product_patch_codebook(images, cfg, vae, generator)
    patches = image_patches(images, vae.cfg.downsample)
    flat = (patches.amax(1) - patches.amin(1)) < 1e-3
    keep = max(int((~flat).sum()) // 4, 1)
    flat_rows = patches[flat][torch.randperm(int(flat.sum()), generator=generator)[:keep]]
    points = torch.cat([patches[~flat], flat_rows])
    return kmeans(points, vae.cfg.vocab_size, cfg.kmeans_iters, generator)


def product_patch_codebook(
    images: torch.Tensor, cfg: VAETrainConfig, vae: DiscreteVAE, generator: torch.Generator
) -> torch.Tensor:
    """Centres ``(P * C, channels * d * d)`` of a product codebook: centre ``p * C + c`` is
    pattern p (an intensity map in [0, 1] per pixel) times colour c (gain-shape quantisation).

    Each non-black patch ``(d * d, channels)`` is split by its best rank-1 fit into a pattern
    scaled to a peak of 1 and a colour. The colours are k-means clustered into the palette; the
    patterns into P - 2 clusters plus the empty and the full pattern (so black and solid
    patches are exact)."""
    p, c = vae.cfg.patterns, vae.cfg.palette
    d2 = vae.cfg.downsample**2
    patches = image_patches(images, vae.cfg.downsample)  # (N, channels * d * d)
    patches = patches[patches.amax(1) > 1e-3].unflatten(1, (-1, d2))  # (N', channels, d*d)
    u, s, v = torch.linalg.svd(patches.transpose(1, 2), full_matrices=False)  # (N, d*d, ch)
    pattern, colour = u[:, :, 0], v[:, 0, :] * s[:, :1]  # (N, d*d), (N, ch)
    sign = torch.sign(pattern.sum(1, keepdim=True))  # the rank-1 fit's sign is arbitrary
    peak = (pattern * sign).amax(1, keepdim=True).clamp_min(1e-6)
    pattern, colour = (pattern * sign / peak).clamp(0, 1), colour * sign * peak
    # k-means++ seeds: a random start can merge two colours (seen: green into cyan).
    palette = kmeans(colour, c, cfg.kmeans_iters, generator, plus_plus=True)  # (C, channels)
    partial = pattern[pattern.amin(1) < 0.99]
    shapes = kmeans(partial, p - 2, cfg.kmeans_iters, generator)
    shapes = torch.cat([shapes.new_zeros(1, d2), shapes.new_ones(1, d2), shapes])  # (P, d*d)
    centres = shapes[:, None, None, :] * palette[None, :, :, None]  # (P, C, channels, d*d)
    return centres.flatten(2).flatten(0, 1)


def palette_of(centres: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """The colours ``(palette, channels)`` of :func:`product_patch_codebook`'s centres: the
    codes of pattern 1, the full one."""
    full = centres.unflatten(0, (cfg.patterns, cfg.palette))[1]  # (palette, channels * d * d)
    return full.unflatten(1, (cfg.channels, -1))[:, :, 0]


@torch.no_grad()
def init_codebook_logits(
    vae: DiscreteVAE,
    images: torch.Tensor,
    spread: float,
    generator: torch.Generator | None = None,
) -> None:
    """Data-dependent init of the encoder's last 1x1 conv (the logits over the codebook).

    A random linear layer scores every position alike (the features share a large common
    component), so the relaxed codes start out carrying no information about the image and
    training stalls on the mean image. Instead seed K feature vectors with k-means++ on the
    features of ``images`` and set the logits to their negative squared distances, scaled so
    that the logits of one position have a standard deviation of ``spread``: from step 0
    different content picks different codes, as a VQ-VAE's data-initialised codebook does.
    """
    h = F.relu(vae.features(images))  # the output layer's input: ReLU, then the 1x1 conv
    feats = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # (N, n)
    centres = feats[kmeans_plus_plus(feats, vae.cfg.vocab_size, generator)]  # (K, n)
    # -|f - c|^2 = 2 f.c - |c|^2 - |f|^2; the last term is the same for every code.
    logits = 2 * feats @ centres.t() - (centres**2).sum(1)
    scale = spread / logits.std(dim=1).mean().clamp_min(1e-8)
    conv = vae.encoder.blocks.output.conv
    conv.w.copy_((2 * scale * centres)[:, :, None, None])
    conv.b.copy_(-scale * (centres**2).sum(1))
