"""Training the dVAE. The objective (paper Sec. 2.1, App. A.2): the evidence lower bound with the
gumbel-softmax relaxation. Temperature tau anneals from 1 to 1/16 on a cosine schedule, the KL weight beta to its
target on a cosine warm-up; reconstruction is the logit-Laplace negative log-likelihood of pixels
mapped to [eps, 1 - eps] (or plain MSE). The loss is normalised per sub-pixel: the sums over
pixels and over latent positions are both divided by ``B * C * H * W``.

Before it, a warm start (:class:`PatchCodeObjective`) may teach encoder and decoder the k-means
codes of pixel patches (:mod:`dalle.train.kmeans`). :func:`fit_vae` trains a dVAE in place on
image batches; :func:`train_vae` is the stage: a dataset in, a trained dVAE and its run out.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle.config import VAE_PRESETS, VAEConfig, to_dict
from dalle.data.sources import ImageTextData
from dalle.images import contact_sheet, png_bytes, tensor_to_image
from dalle.io import write_bytes_atomic
from dalle.models.vae import DiscreteVAE, map_pixels
from dalle.train.kmeans import (
    image_patches,
    init_codebook_logits,
    nearest,
    palette_of,
    patch_codebook,
)
from dalle.train.loop import Callback, SeededObjective, train
from dalle.train.run import Trained, start_run
from dalle.train.schedules import cosine_ramp
from dalle.train.train_config import CheckpointConfig, RunConfig, VAETrainConfig


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


class VAEObjective(SeededObjective):
    """``(model, images, step) -> (loss, metrics)`` for :func:`dalle.train.loop.train`; its
    generator draws the gumbel noise."""

    def __init__(self, cfg: VAETrainConfig, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.cfg = cfg

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
        return nearest(patches, centres).view(-1, n, n)

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
    with torch.no_grad():
        recon = vae.decode(vae.encode(images.to(vae.device))).cpu()
    tiles = []
    for a, b in zip(images, recon, strict=True):
        tiles += [tensor_to_image(a), tensor_to_image(b)]
    return contact_sheet(tiles, columns=2 * (columns // 2))


def fit_vae(
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
    """Train ``vae`` in place on image batches (tensors, or dicts with ``image``); saves
    ``run_dir/model`` and reconstruction grids of ``grid_images`` periodically. Returns the
    last metrics.

    ``checkpoint`` / ``resume`` (see :func:`dalle.train.loop.train`) need a one-phase recipe,
    ``warm_start`` 0 or 1: the k-means codebook or the codebook-logit init is recomputed from
    the same first batches on resume, then the checkpoint's state replaces the weights."""
    if (checkpoint is not None or resume) and not cfg.one_phase:
        raise ValueError(
            "checkpoints and --resume need a one-phase recipe: --warm-start 0 or 1, "
            f"got {cfg.warm_start}"
        )
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optim = cfg.optim()
    run_dir = Path(run_dir)

    def save(step: int) -> None:
        vae.save(run_dir / "model")
        grid = reconstruction_grid(vae, grid_images)
        write_bytes_atomic(run_dir / f"recon_{step:06d}.png", png_bytes(grid))

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
        init_codebook_logits(vae, init_batch.to(vae.device), cfg.init_spread, generator)
    rest = cfg.steps - warm
    phase = replace(optim, steps=rest, warmup_steps=min(cfg.warmup_steps, rest))
    elbo = VAEObjective(cfg, generator)
    if warm:
        return train(vae, elbo, images, phase, run_dir, callbacks, "dVAE", progress, warm)
    return train(vae, elbo, images, phase, run_dir, callbacks, "dVAE", progress,
                 checkpoint=checkpoint, resume=resume)  # fmt: skip


def train_vae(
    data: ImageTextData,
    out: str | Path,
    cfg: VAETrainConfig = VAETrainConfig(),
    model: VAEConfig | None = None,
    run: RunConfig = RunConfig(),
) -> Trained[DiscreteVAE]:
    """Stage 1: a dVAE of architecture ``model`` (default: the preset that suits ``data``,
    ``data.vae_preset``: ``tiny`` for pictures, ``shapes`` for the built-in shapes) trained on
    ``data`` by the recipe ``cfg``. Writes ``out/model/`` (config.json + model.safetensors),
    ``out/metrics.jsonl``, ``out/train_config.json`` and reconstruction grids
    ``out/recon_*.png``; ``run`` sets saving, checkpoints, resume and the device."""
    model = model or VAE_PRESETS[data.vae_preset]
    if run.resume and not cfg.one_phase:
        raise ValueError("--resume needs a one-phase recipe: --warm-start 0 or 1")
    batches = data.batches(model.image_size, cfg.batch_size, cfg.seed)
    grid, _ = data.eval_images(16, model.image_size)
    settings = {"vae": to_dict(model), "train": to_dict(cfg)}
    out = start_run(Path(out), settings, run.resume, run.force)
    checkpoint = run.checkpoint if cfg.one_phase else None
    torch.manual_seed(cfg.seed)
    vae = DiscreteVAE(model).to(run.device)
    metrics = fit_vae(
        vae, cfg, batches, out, grid, run.save_every, run.progress, checkpoint, run.resume
    )
    return Trained(vae, out, metrics)
