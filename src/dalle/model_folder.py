"""The layout of a saved model folder and the checks its parts pass together: the one place both its writers (``dalle.pipeline``, the
trainers) and its readers (the pipeline, ``dalle eval``, ``dalle train-clip``) take it from::

    model_dir/
      tokenizer.json
      vae/          config.json + model.safetensors  (dalle.models.vae.DiscreteVAE)
      transformer/  config.json + model.safetensors  (dalle.models.dalle_transformer.DALLE)
      clip/         config.json + model.safetensors  (dalle.models.clip.CLIP; optional)
      examples.json captions of the training data, to suggest as prompts (optional)
      generation.json  the default sampler settings (optional: without it, plain sampling)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dalle.models.clip import CLIP
    from dalle.models.dalle_transformer import DALLE
    from dalle.models.vae import DiscreteVAE
    from dalle.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
VAE_DIR = "vae"
TRANSFORMER_DIR = "transformer"
CLIP_DIR = "clip"
EXAMPLES_FILE = "examples.json"
GENERATION_FILE = "generation.json"
REQUIRED = (TOKENIZER_FILE, VAE_DIR, TRANSFORMER_DIR)  # without one of these, no model


def check_compatible(
    tokenizer: Tokenizer, vae: DiscreteVAE, transformer: DALLE, clip: CLIP | None = None
) -> None:
    """ValueError unless the parts agree on vocabularies, the code grid and the image size."""
    cfg = transformer.cfg
    if tokenizer.vocab_size != cfg.text_vocab:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} ids but the transformer expects "
            f"text_vocab={cfg.text_vocab}: the parts come from different runs"
        )
    if vae.cfg.vocab_size != cfg.image_vocab or vae.cfg.grid_size != cfg.image_grid:
        raise ValueError(
            f"the dVAE makes a {vae.cfg.grid_size}x{vae.cfg.grid_size} grid of {vae.cfg.vocab_size} "
            f"codes but the transformer expects {cfg.image_grid}x{cfg.image_grid} of "
            f"{cfg.image_vocab}: the parts come from different runs"
        )
    if vae.cfg.palette != cfg.image_palette:
        raise ValueError(
            f"the dVAE's codes are {vae.cfg.patterns or vae.cfg.vocab_size} patterns x "
            f"{vae.cfg.palette or 1} colours but the transformer reads them with image_palette="
            f"{cfg.image_palette}: the parts come from different runs"
        )
    if clip is not None:
        c = clip.cfg
        if tokenizer.vocab_size != c.text_vocab:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but CLIP expects text_vocab="
                f"{c.text_vocab}: train CLIP with this model's tokenizer (dalle train-clip --model)"
            )
        if (c.image_size, c.channels) != (vae.cfg.image_size, vae.cfg.channels):
            raise ValueError(
                f"CLIP reads {c.channels}x{c.image_size}x{c.image_size} images but the dVAE draws "
                f"{vae.cfg.channels}x{vae.cfg.image_size}x{vae.cfg.image_size}"
            )


def read_examples(path: Path) -> list[str]:
    """The prompts of an ``examples.json`` (none when the folder has no such file)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f'{path}: expected {{"prompts": [non-empty strings]}}')
    return prompts
