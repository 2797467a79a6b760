"""The DALL-E transformer objective (Ramesh et al. 2021, Sec. 2.2): cross entropy of the next
token, averaged separately over text and image targets and weighted 1/8 and 7/8.

Text targets are caption tokens 1 .. text_len - 1 (the first token has no predecessor), pads
included as their per-position ids; image targets are all given image codes. Caption dropout
(whole captions replaced by pads) trains the unconditional model that classifier-free guidance
in ``dalle.sampling`` mixes with the conditional one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle.models.codebook import split_codes
from dalle.models.dalle import DALLE
from dalle.train.checkpoint import CheckpointConfig
from dalle.train.loop import Callback, OptimConfig, train


def dalle_loss(
    model: DALLE,
    text: torch.Tensor,
    image: torch.Tensor,
    text_weight: float = 1 / 8,
    image_weight: float = 7 / 8,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``text`` (B, text_len), ``image`` (B, n >= 1) codes -> ``(loss, {"text_loss", "image_loss"})``.

    ``loss = text_weight * text_loss + image_weight * image_loss``; the metrics are the two
    means in nats, as floats. The last image code is only a target, so the model sees
    ``image[:, :-1]``.
    """
    if image.ndim != 2 or image.shape[1] < 1:
        raise ValueError(f"expected image codes of shape (B, n >= 1), got {tuple(image.shape)}")
    if text_weight < 0 or image_weight < 0:
        raise ValueError(f"expected weights >= 0, got {text_weight}, {image_weight}")
    cfg = model.cfg
    t = cfg.text_len
    # Each position through the head of the modality it predicts, never the full vocabulary.
    h = model.hidden(text, image[:, :-1])  # (B, text_len + n - 1, C)
    text_logits = model.text_logits(h[:, : t - 1]).float()  # (B, text_len - 1, text_vocab_total)
    text_targets = model.text_tokens(text)[:, 1:]
    text_loss = F.cross_entropy(text_logits.flatten(0, 1), text_targets.flatten())
    factors = model.image_factor_logits(h[:, t - 1 :]).float().flatten(0, 1)  # (B * n, F)
    codes = image.long().flatten()
    if cfg.image_palette:  # a product of two softmaxes: its NLL is the sum of theirs
        p = cfg.image_vocab // cfg.image_palette
        pattern, colour = split_codes(codes, cfg.image_palette)
        image_loss = F.cross_entropy(factors[:, :p], pattern) + F.cross_entropy(
            factors[:, p:], colour
        )
    else:
        image_loss = F.cross_entropy(factors, codes)
    loss = text_weight * text_loss + image_weight * image_loss
    return loss, {"text_loss": text_loss.item(), "image_loss": image_loss.item()}


def caption_dropout(
    text: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A copy of ``text`` (B, text_len) with each whole row, with probability ``p``, set to pads (0)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout p must be in [0, 1], got {p}")
    if text.ndim != 2:
        raise ValueError(f"expected text of shape (B, text_len), got {tuple(text.shape)}")
    drop = torch.rand(text.shape[0], generator=generator).to(text.device) < p  # (B,)
    return torch.where(drop[:, None], torch.zeros_like(text), text)


@dataclass(frozen=True)
class DalleTrainConfig:
    """Optimisation of the transformer (paper App. B.2, scaled down to minutes on a CPU)."""

    steps: int = 3000
    # Batch 8 x 1 200 steps beat 16 x 600 (the same sequences) on the 48-prompt benchmark:
    # seen 36.2 % vs 31.0 %, held-out 11.8 % vs 3.9 %; lr 6e-3 gave 32.8 / 10.5.
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    text_weight: float = 1 / 8
    image_weight: float = 7 / 8
    caption_dropout: float = 0.15  # trains the unconditional model for guidance
    seed: int = 0
    accumulate: int = 1  # batches per optimisation step
    precision: str = "fp32"  # or bf16 (autocast), fp16 (autocast + gradient scaler, CUDA)
    ema: float | None = None  # decay of a moving average of the weights, which is the result

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")


class DalleObjective:
    """``(model, (text, codes), step) -> (loss, metrics)`` for :func:`dalle.train.loop.train`."""

    def __init__(self, cfg: DalleTrainConfig, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The caption-dropout generator's state (saved in training checkpoints)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def __call__(
        self, model: DALLE, batch: tuple[torch.Tensor, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        text, codes = batch
        if self.cfg.caption_dropout:
            text = caption_dropout(text, self.cfg.caption_dropout, self.generator)
        return dalle_loss(model, text, codes, self.cfg.text_weight, self.cfg.image_weight)


def train_dalle(
    model: DALLE,
    cfg: DalleTrainConfig,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    run_dir: Path,
    callbacks: list[Callback] = (),  # type: ignore[assignment]
    progress: bool = True,
    checkpoint: CheckpointConfig | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place on ``(text, codes)`` batches; returns the last metrics.
    ``checkpoint`` and ``resume`` as in :func:`dalle.train.loop.train`."""
    torch.manual_seed(cfg.seed)
    optim = OptimConfig.of(cfg, betas=(0.9, 0.95))
    objective = DalleObjective(cfg, torch.Generator().manual_seed(cfg.seed))
    return train(
        model,
        objective,
        batches,
        optim,
        run_dir,
        list(callbacks),
        "train",
        progress,
        checkpoint=checkpoint,
        resume=resume,
    )
