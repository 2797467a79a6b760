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


def sample_codes(
    model: DALLE,
    text: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    prime: torch.Tensor | None = None,
    callback=None,
    compile: bool = False,
    use_cache: bool = True,
    **settings,
) -> torch.Tensor:
    """``Sampler(**settings).sample(model, text, ...)``: the settings and the loop's arguments
    in one call, as the sampling tests write them."""
    from dalle.sampler import Sampler

    sampler = Sampler(**settings)
    return sampler.sample(model, text, generator=generator, prime=prime, callback=callback,
                          compile=compile, use_cache=use_cache)  # fmt: skip
