"""Prompts in, images out: the tokenizer, the dVAE and the transformer behind one call.

A saved pipeline is a folder::

    model_dir/
      tokenizer.json
      vae/          config.json + model.safetensors  (dalle.models.vae.DiscreteVAE)
      transformer/  config.json + model.safetensors  (dalle.models.dalle.DALLE)

Each part loads with strict checks; a missing or mismatched part is a one-line ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dalle.images import tensor_to_image
from dalle.models.dalle import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.sampling import sample_codes
from dalle.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
VAE_DIR = "vae"
TRANSFORMER_DIR = "transformer"


@dataclass
class DallePipeline:
    tokenizer: Tokenizer
    vae: DiscreteVAE
    transformer: DALLE

    def __post_init__(self) -> None:
        check_compatible(self.tokenizer, self.vae, self.transformer)
        self.vae.eval()
        self.transformer.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> DallePipeline:
        """Load a folder written by :meth:`save_pretrained`."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ValueError(f"model folder {directory} does not exist")
        for part in (TOKENIZER_FILE, VAE_DIR, TRANSFORMER_DIR):
            if not (directory / part).exists():
                raise ValueError(
                    f"{directory} is not a dalle model folder: missing {part} "
                    f"(expected {TOKENIZER_FILE}, {VAE_DIR}/ and {TRANSFORMER_DIR}/)"
                )
        tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
        vae = DiscreteVAE.load(directory / VAE_DIR).to(device)
        transformer = DALLE.load(directory / TRANSFORMER_DIR).to(device)
        return cls(tokenizer, vae, transformer)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the three parts into ``directory`` (each file atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(directory / TOKENIZER_FILE)
        self.vae.save(directory / VAE_DIR)
        self.transformer.save(directory / TRANSFORMER_DIR)

    @property
    def device(self) -> torch.device:
        return self.transformer.head.weight.device

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text ids ``(N, text_len)``; an empty prompt is a ``ValueError``, a long one
        is cut to ``text_len`` tokens with a warning."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("expected a non-empty list of prompts")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i + 1} is empty")
        text, _ = self.tokenizer.encode_batch(prompts, self.transformer.cfg.text_len)
        return text

    @torch.no_grad()
    def generate_codes(
        self,
        prompts: list[str],
        num_images: int = 1,
        seed: int = 0,
        batch_size: int = 16,
        **sampling,
    ) -> torch.Tensor:
        """Image codes ``(len(prompts) * num_images, h*w)``, prompt-major: all images of prompt
        0, then prompt 1, ... ``sampling``: temperature, top_k, top_p, cond_scale, prime."""
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        text = self.encode_prompts(prompts).repeat_interleave(num_images, dim=0)
        generator = torch.Generator(self.device).manual_seed(seed)
        chunks = [
            sample_codes(self.transformer, t.to(self.device), generator=generator, **sampling)
            for t in text.split(batch_size)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Codes ``(N, h*w)`` -> images ``(N, C, H, W)`` in [0, 1] on the CPU."""
        return torch.cat([self.vae.decode(c).cpu() for c in codes.split(batch_size)])

    def __call__(
        self,
        prompts: list[str] | str,
        num_images: int = 1,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cond_scale: float = 1.0,
        batch_size: int = 16,
    ) -> list[Image.Image]:
        """Generate ``num_images`` images per prompt; returns PIL images, prompt-major.
        The same arguments (seed included) give the same images."""
        if isinstance(prompts, str):
            prompts = [prompts]
        codes = self.generate_codes(
            prompts,
            num_images,
            seed,
            batch_size,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            cond_scale=cond_scale,
        )
        return [tensor_to_image(x) for x in self.decode(codes)]


def check_compatible(tokenizer: Tokenizer, vae: DiscreteVAE, transformer: DALLE) -> None:
    """ValueError unless the three parts agree on vocabularies and the code grid."""
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
