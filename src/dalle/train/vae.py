"""The dVAE objective (paper Sec. 2.1, App. A.2): the evidence lower bound with the gumbel-softmax
relaxation. Temperature tau anneals from 1 to 1/16 on a cosine schedule, the KL weight beta to its
target on a cosine warm-up; reconstruction is the logit-Laplace negative log-likelihood of pixels
mapped to [eps, 1 - eps] (or plain MSE). The loss is normalised per sub-pixel: the sums over
pixels and over latent positions are both divided by ``B * C * H * W``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle.config import VAEConfig, VAETrainConfig, to_dict
from dalle.models.vae import DiscreteVAE, map_pixels
from dalle.train.checkpoint import CheckpointConfig
from dalle.train.schedules import cosine_ramp


def logit_laplace_nll(stats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-sub-pixel NLL ``(B, C, H, W)`` of ``images`` in [0, 1] under decoder ``stats`` (B, 2C, H, W).

    With x = map_pixels(image), mu = stats[:, :C], b = exp(stats[:, C:]), the density is
    ``1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b)``.
    """
    c = images.shape[1]
    x = map_pixels(images)
    mu, log_b = stats[:, :c], stats[:, c:]
    return (
        math.log(2.0)
        + log_b
        + torch.log(x * (1 - x))
        + (torch.logit(x) - mu).abs() * torch.exp(-log_b)
    )


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(q || uniform) per latent position ``(B, h, w)`` for logits ``(B, K, h, w)``, in nats."""
    log_q = F.log_softmax(logits.movedim(1, -1), dim=-1)  # a contiguous view for NHWC logits
    return (log_q.exp() * log_q).sum(dim=-1) + math.log(logits.shape[1])


def batch_usage_kl(logits: torch.Tensor) -> torch.Tensor:
    """KL(mean over batch and positions of q || uniform), in nats: 0 when every code is used equally."""
    mean_q = F.softmax(logits.movedim(1, -1), dim=-1).mean(dim=(0, 1, 2))  # (K,)
    return (mean_q * mean_q.clamp_min(1e-12).log()).sum() + math.log(logits.shape[1])


def reconstruction_loss(kind: str, stats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-sub-pixel loss ``(B, C, H, W)``: logit-Laplace NLL, or squared error in the mapped
    space taken before ``unmap_pixels``' clamp (which has no gradient)."""
    if kind == "logit_laplace":
        return logit_laplace_nll(stats, images)
    return (torch.sigmoid(stats[:, : images.shape[1]]) - map_pixels(images)) ** 2


class VAEObjective:
    """``(model, images, step) -> (loss, metrics)`` for :func:`dalle.train.loop.train`."""

    def __init__(self, cfg: VAETrainConfig, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The gumbel-noise generator's state (saved in training checkpoints)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def tau(self, step: int) -> float:
        """``step`` counts from the start of the relaxed phase (after any warm start)."""
        steps = self.cfg.tau_anneal_steps or max(1, self.cfg.steps - self.cfg.warm_start_steps)
        return cosine_ramp(step, steps, self.cfg.tau_start, self.cfg.tau_end)

    def beta(self, step: int) -> float:
        return cosine_ramp(step, self.cfg.kl_warmup_steps, 0.0, self.cfg.kl_weight)

    def __call__(
        self, model: DiscreteVAE, images: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        tau, beta = self.tau(step), self.beta(step)
        out = model(images, tau=tau, hard=self.cfg.straight_through, generator=self.generator)
        recon = reconstruction_loss(self.cfg.recon, out["stats"], images)
        if beta > 0:
            kl = kl_to_uniform(out["logits"])
        else:  # reported, but no backward pass through a term weighted 0
            with torch.no_grad():
                kl = kl_to_uniform(out["logits"])
        loss = (recon.sum() + beta * kl.sum()) / images.numel()
        if self.cfg.usage_weight:
            loss = loss + self.cfg.usage_weight * batch_usage_kl(out["logits"])
        with torch.no_grad():
            mse = F.mse_loss(model.reconstruction(out["stats"]), images).item()
        metrics = {
            "recon": recon.mean().item(),
            "kl": kl.mean().item(),  # nats per latent position
            "tau": tau,
            "beta": beta,
            "psnr": -10 * math.log10(max(mse, 1e-10)),
            # fraction of the codebook that this batch's argmax codes use: collapse shows early
            "batch_usage": out["logits"].argmax(dim=1).unique().numel() / out["logits"].shape[1],
        }
        return loss, metrics


def shapes_eval_set(n: int = 256, seed: int = 1_000_003) -> tuple[torch.Tensor, list[str]]:
    """Held-out evaluation images: half unseen ``train``-split scenes, half ``holdout`` scenes."""
    from dalle.data.shapes import make_sample
    from dalle.images import image_to_tensor

    samples = [make_sample(seed, "train", i) for i in range(n - n // 2)]
    samples += [make_sample(seed, "holdout", i) for i in range(n // 2)]
    return torch.stack([image_to_tensor(s.image) for s in samples]), [s.caption for s in samples]


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
        assign = torch.cdist(points, centres).argmin(dim=1)  # (N,)
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


class PatchCodeObjective:
    """Warm start: the k-means code of each pixel patch is the target of the encoder (cross
    entropy) and the input of the decoder (reconstruction loss against the image). Encoder and
    decoder learn one shared, informative code from the first step; the relaxed ELBO then
    refines it. ``(model, images, step) -> (loss, metrics)``."""

    def __init__(self, cfg: VAETrainConfig, centres: torch.Tensor, ce_weight: float = 0.01):
        self.cfg, self.centres, self.ce_weight = cfg, centres, ce_weight

    def codes(self, vae: DiscreteVAE, images: torch.Tensor) -> torch.Tensor:
        """The nearest centre of each patch, ``(B, h, w)``."""
        n = vae.cfg.grid_size
        patches = image_patches(images, vae.cfg.downsample)
        centres = self.centres.to(patches.device, patches.dtype)
        return torch.cdist(patches, centres).argmin(dim=1).view(-1, n, n)

    def __call__(
        self, model: DiscreteVAE, images: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        codes = self.codes(model, images)
        ce = F.cross_entropy(model.logits(images), codes)
        stats = model.decoder.forward_codes(codes)
        recon = reconstruction_loss(self.cfg.recon, stats, images)
        loss = recon.mean() + self.ce_weight * ce
        with torch.no_grad():
            mse = F.mse_loss(model.reconstruction(stats), images).item()
        return loss, {
            "recon": recon.mean().item(),
            "code_ce": ce.item(),
            "psnr": -10 * math.log10(max(mse, 1e-10)),
        }


def reconstruction_grid(vae: DiscreteVAE, images: torch.Tensor, columns: int = 8):
    """A PNG-ready grid of (original | reconstruction) pairs."""
    from dalle.images import contact_sheet, tensor_to_image

    with torch.no_grad():
        recon = vae.decode(vae.encode(images))
    tiles = []
    for a, b in zip(images, recon, strict=True):
        tiles += [tensor_to_image(a), tensor_to_image(b)]
    return contact_sheet(tiles, columns=2 * (columns // 2))


def train_vae(
    vae: DiscreteVAE,
    cfg: VAETrainConfig,
    batches,
    run_dir: Path,
    grid_images: torch.Tensor,
    save_every: int = 500,
    progress: bool = True,
    checkpoint: CheckpointConfig | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Train ``vae`` in place; saves ``run_dir/model`` and reconstruction grids periodically.

    ``checkpoint`` / ``resume`` (see :func:`dalle.train.loop.train`) need a one-phase recipe,
    ``warm_start`` 0 or 1: the k-means codebook or the codebook-logit init is recomputed from
    the same first batches on resume, then the checkpoint's state replaces the weights."""
    if (checkpoint is not None or resume) and 0 < cfg.warm_start_steps < cfg.steps:
        raise ValueError(
            "checkpoints and --resume need a one-phase recipe: --warm-start 0 or 1, "
            f"got {cfg.warm_start}"
        )
    from dalle.images import png_bytes
    from dalle.io import write_bytes_atomic, write_json_atomic
    from dalle.train import distributed
    from dalle.train.loop import Callback, OptimConfig, train

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optim = OptimConfig.of(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        write_json_atomic(
            run_dir / "train_config.json", {"vae": to_dict(vae.cfg), "train": to_dict(cfg)}
        )

    def save(step: int) -> None:
        vae.save(run_dir / "model")
        write_bytes_atomic(
            run_dir / f"recon_{step:06d}.png", png_bytes(reconstruction_grid(vae, grid_images))
        )

    images = (batch["image"] if isinstance(batch, dict) else batch for batch in batches)
    callbacks = [Callback(save_every, save)]
    warm = cfg.warm_start_steps
    if warm:
        pool = torch.cat([next(images) for _ in range(-(-cfg.kmeans_images // cfg.batch_size))])
        centres = patch_codebook(pool, cfg, vae, generator)
        if vae.cfg.palette:  # the decoder's palette starts at the k-means colours
            with torch.no_grad():
                vae.decoder.palette.copy_(palette_of(centres, vae.cfg))
        objective = PatchCodeObjective(cfg, centres)
        phase = replace(optim, steps=warm)
        if warm == cfg.steps:
            desc = "dVAE warm start"
            return train(vae, objective, images, phase, run_dir, callbacks, desc, progress,
                         checkpoint=checkpoint, resume=resume)  # fmt: skip
        train(vae, objective, images, phase, run_dir, callbacks, "dVAE warm start", progress)
    elif cfg.init_spread > 0 and not vae.cfg.palette:  # the init is for a flat logit layer
        init_batch = torch.cat([next(images) for _ in range(max(1, 64 // cfg.batch_size))])
        init_codebook_logits(vae, init_batch, cfg.init_spread, generator)
    rest = cfg.steps - warm
    phase = replace(optim, steps=rest, warmup_steps=min(cfg.warmup_steps, rest))
    elbo = VAEObjective(cfg, generator)
    if warm:
        return train(vae, elbo, images, phase, run_dir, callbacks, "dVAE", progress, warm)
    return train(vae, elbo, images, phase, run_dir, callbacks, "dVAE", progress,
                 checkpoint=checkpoint, resume=resume)  # fmt: skip


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
