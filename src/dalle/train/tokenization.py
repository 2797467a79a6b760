"""The two tokenizations a transformer trains on: a BPE tokenizer learnt from the captions
(text tokens), and the dVAE's codes of every image, computed once (image tokens)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from tqdm import tqdm

from dalle.data.sources import ImageTextData
from dalle.data.tokens import TokenSet, encode_pairs
from dalle.models.vae import DiscreteVAE
from dalle.tokenizer import Tokenizer
from dalle.train.train_config import TokenizerConfig


def train_tokenizer(
    data: ImageTextData | Iterable[str], cfg: TokenizerConfig = TokenizerConfig()
) -> Tokenizer:
    """A byte-level BPE tokenizer learnt from the captions of ``data`` (a dataset, or the
    captions themselves)."""
    captions = data.captions() if isinstance(data, ImageTextData) else data
    return Tokenizer.train(captions, vocab_size=cfg.vocab_size)


def encode(
    vae: DiscreteVAE,
    data: ImageTextData,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> TokenSet:
    """Every readable image of ``data`` through the dVAE's encoder once: codes ``(N, h*w)``
    and captions in one :class:`~dalle.data.tokens.TokenSet`. Unreadable files of a folder are
    left out (``data.report()`` says which)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = data.image_batches(vae.cfg.image_size, batch_size, seed)
    first = next(batches, None)
    if first is None:
        why = data.report() or "none"
        raise ValueError(f"--data {data.describe()}: no image + caption pair could be read ({why})")
    batches = itertools.chain([first], batches)
    bar = tqdm(batches, desc="encode", unit="batch", dynamic_ncols=True, disable=not progress)
    return encode_pairs(vae, ((images.to(vae.device), captions) for images, captions in bar))
