"""Reranking by CLIP (Ramesh et al. 2021, Sec. 2.5): score each candidate image against its
caption, or a variation against the picture it varies, and keep the best distinct ones."""

from __future__ import annotations

import torch

from dalle.models.clip import CLIP
from dalle.tokenizer import Tokenizer


class Reranker:
    """CLIP cosine similarities of candidate images ``(N, C, H, W)`` in [0, 1]: to captions
    (tokenized with ``tokenizer``) or to one reference picture."""

    def __init__(self, clip: CLIP, tokenizer: Tokenizer):
        self.clip, self.tokenizer = clip, tokenizer

    @torch.no_grad()
    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        """Similarity ``(N,)`` of each prompt with its image."""
        if len(prompts) != len(images):
            raise ValueError(f"expected one prompt per image, got {len(prompts)} and {len(images)}")
        distinct = list(dict.fromkeys(prompts))  # reranking repeats each prompt per candidate
        text, _ = self.tokenizer.encode_batch(distinct, self.clip.cfg.text_len)
        dev = self.clip.device
        t = self.clip.encode_text(text.to(dev))  # (distinct, D)
        row = torch.tensor([distinct.index(p) for p in prompts], device=dev)
        return (t[row] * self._embed(images)).sum(-1).cpu()

    @torch.no_grad()
    def score_images(self, reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Similarity ``(N,)`` of each image with one reference image ``(1, C, H, W)`` (how a
        variation is reranked: closest to its source)."""
        return (self._embed(images) @ self._embed(reference).T)[:, 0].cpu()

    def candidates(
        self, prompts: list[str], images: torch.Tensor, source: torch.Tensor | None
    ) -> torch.Tensor:
        """Scores ``(N,)`` of candidates, one prompt each: similarity to the prompt, or for an
        empty prompt (a variation) to the ``source`` picture ``(1, C, H, W)``."""
        scores = torch.empty(len(prompts))
        captioned = [i for i, p in enumerate(prompts) if p.strip()]
        if captioned:
            scores[captioned] = self.score([prompts[i] for i in captioned], images[captioned])
        empty = [i for i, p in enumerate(prompts) if not p.strip()]
        if empty:  # only with a source: empty prompts are refused without an image
            scores[empty] = self.score_images(source, images[empty])
        return scores

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> CLIP unit vectors ``(N, D)`` on CLIP's device."""
        dev = self.clip.device
        return torch.cat([self.clip.encode_image(x.to(dev)) for x in images.split(256)])


def best_distinct(scores: torch.Tensor, images: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` best of ``scores`` (N,), best first, taking each distinct image of
    ``images`` (N, C, H, W) in [0, 1] once: a low temperature often draws one image many times
    (and a product codebook can draw one image with different codes), and a caller asking
    for k images wants k different ones. Repeats fill in only when fewer than k differ."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    pixels = (images * 255).round().to(torch.uint8).cpu()
    seen: set[bytes] = set()
    first, again = [], []
    for i in order:
        key = pixels[i].numpy().tobytes()
        (again if key in seen else first).append(i)
        seen.add(key)
    chosen = set((first + again)[:k])
    return [i for i in order if i in chosen]
