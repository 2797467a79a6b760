"""Transformers for the sampling tests: random weights sharpened so that logits are peaked and
captions change what is drawn (at the 0.02 init every caption draws alike)."""

from __future__ import annotations

import torch

from dalle.config import TransformerConfig
from dalle.models.dalle_transformer import DALLE


def sharp_dalle(cfg: TransformerConfig) -> DALLE:
    """``DALLE(cfg)`` in eval mode, seeded with 0, head weights x5 and text embeddings x30."""
    torch.manual_seed(0)
    model = DALLE(cfg).eval()
    with torch.no_grad():
        model.head.weight.mul_(5)
        model.text_emb.weight.mul_(30)
    return model
