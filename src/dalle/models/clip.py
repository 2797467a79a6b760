"""CLIP (Radford et al. 2021), small: a text tower and an image tower projected into one space.

DALL-E reranks its samples with CLIP (Ramesh et al. 2021, Sec. 2.5): draw N candidates, keep
those whose image embedding lies closest to the caption's. Both towers here reuse the DALL-E
transformer's :class:`~dalle.models.transformer.Block`.

- Text: tokenizer ids ``(B, text_len)`` (pad id 0, padding only at the end) -> token and
  position embeddings -> causal blocks -> LayerNorm -> the hidden state at the last real token
  (the "end of text" pooling of CLIP) -> a linear projection.
- Image: ``(B, C, H, W)`` in [0, 1] -> a conv net (stride-2 3x3 convolutions, the final map
  flattened so object positions survive) or a ViT (patches, class token, blocks) -> a linear
  projection.

Embeddings are L2-normalised; ``similarity`` is their cosine, and the training logits are
that cosine times a learned temperature ``exp(logit_scale)`` (clamped at 100, as in CLIP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dalle.config import CLIPConfig
from dalle.images import check_images
from dalle.models.checks import check_ids
from dalle.models.saving import Saved
from dalle.models.transformer import Block

if TYPE_CHECKING:
    from dalle.tokenizer import Tokenizer

MAX_LOGIT_SCALE = math.log(100.0)


class TextTower(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.text_vocab, cfg.text_dim)
        self.pos_emb = nn.Embedding(cfg.text_len, cfg.text_dim)
        self.layers = nn.ModuleList(
            Block(cfg.text_dim, cfg.text_heads) for _ in range(cfg.text_depth)
        )
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.proj = nn.Linear(cfg.text_dim, cfg.embed_dim, bias=False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ids -> ``(B, embed_dim)``, unnormalised."""
        pos = torch.arange(text.shape[1], device=text.device)
        x = self.tok_emb(text) + self.pos_emb(pos)
        for layer in self.layers:  # causal: a token never sees the padding after it
            x = layer(x, None, is_causal=True)
        last = (text != 0).sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        return self.proj(self.norm(x[torch.arange(len(text)), last]))


class ConvTower(nn.Module):
    """``len(conv_widths)`` stages of a stride-2 3x3 convolution, GroupNorm and GELU, then the
    whole final map (C x h x w) through one linear layer."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        stages: list[nn.Module] = []
        n_in = cfg.channels
        for width in cfg.conv_widths:
            stages += [
                nn.Conv2d(n_in, width, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GELU(),
            ]
            n_in = width
        self.net = nn.Sequential(*stages)
        side = cfg.image_size // 2 ** len(cfg.conv_widths)
        self.proj = nn.Linear(n_in * side * side, cfg.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(images).flatten(1))


class ViTTower(nn.Module):
    """Non-overlapping patches, a class token and learned positions, full-attention blocks."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        n = (cfg.image_size // cfg.patch) ** 2
        self.patch_emb = nn.Conv2d(cfg.channels, cfg.image_dim, cfg.patch, stride=cfg.patch)
        self.cls_emb = nn.Parameter(torch.zeros(1, 1, cfg.image_dim))
        self.pos_emb = nn.Parameter(0.02 * torch.randn(1, n + 1, cfg.image_dim))
        self.layers = nn.ModuleList(
            Block(cfg.image_dim, cfg.image_heads) for _ in range(cfg.image_depth)
        )
        self.norm = nn.LayerNorm(cfg.image_dim)
        self.proj = nn.Linear(cfg.image_dim, cfg.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_emb(images).flatten(2).transpose(1, 2)  # (B, n, C)
        x = torch.cat([self.cls_emb.expand(len(x), -1, -1), x], dim=1) + self.pos_emb
        for layer in self.layers:
            x = layer(x, None)
        return self.proj(self.norm(x[:, 0]))


class CLIP(Saved):
    """``encode_text``, ``encode_image`` (unit vectors) and ``similarity`` (their cosines)."""

    config_class = CLIPConfig

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextTower(cfg)
        self.image = ConvTower(cfg) if cfg.image_tower == "conv" else ViTTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def check_text(self, text: torch.Tensor) -> None:
        n, v = self.cfg.text_len, self.cfg.text_vocab
        if text.ndim != 2 or text.shape[1] != n:
            raise ValueError(f"expected text ids of shape (B, {n}), got {tuple(text.shape)}")
        check_ids(text, "text ids", v)

    def check_images(self, images: torch.Tensor) -> None:
        check_images(images, self.cfg.channels, self.cfg.image_size)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids ``(B, text_len)`` -> unit vectors ``(B, embed_dim)``."""
        self.check_text(text)
        return F.normalize(self.text(text.long()), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> unit vectors ``(B, embed_dim)``."""
        self.check_images(images)
        return F.normalize(self.image(images * 2 - 1), dim=-1)

    def similarity(self, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(n_text, n_images)`` of every caption with every image."""
        return self.encode_text(text) @ self.encode_image(images).T

    def temperature(self) -> torch.Tensor:
        """The learned logit scale, clamped to at most 100."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def caption_positives(captions: Sequence[str], tokenizer: Tokenizer) -> torch.Tensor:
    """``(B, B)`` bool: the two captions are the same text once normalised (the positives rule
    of data without a finer one)."""
    norm = [tokenizer.normalize(c) for c in captions]
    return torch.tensor([[a == b for b in norm] for a in norm])
