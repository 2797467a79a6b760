"""Sampling image codes from the DALL-E transformer (Ramesh et al. 2021, Sec. 2.2 and 2.3).

One code at a time in raster order, from ``softmax(logits / temperature)`` after optional top-k
and nucleus (top-p) filtering. Classifier-free guidance (Ho & Salimans 2021, a later addition
to DALL-E-style samplers) runs conditional and all-pad rows in one batch and mixes their logits
``uncond + cond_scale * (cond - uncond)``. Priming keeps the first rows of an image as given.
With the KV cache each new code costs one position; without it, one full forward pass (the
baseline of ``benchmarks/speed.py``). Every random draw uses the caller's generator. The
cached step can run through ``torch.compile`` (``compile=True``, :func:`compiled_step`).

:class:`SamplingConfig` holds the settings that travel together (and CLIP reranking's
candidate count): a model folder ships its defaults as ``generation.json`` (see
``dalle.pipeline``) and a caller overrides single fields per call.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dalle.compiling import Compiled
from dalle.models.dalle_transformer import DALLE
from dalle.models.transformer import KVCache


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw images: ``temperature`` divides the logits; ``top_k`` / ``top_p`` keep the k
    likeliest codes / the nucleus of that mass (``None``: off); ``cond_scale`` is the
    classifier-free guidance scale (1: off); ``rerank`` draws that many candidates per image
    and keeps the best by CLIP (``None``: off; needs a CLIP model). The defaults are plain
    sampling, the behaviour of a model folder without ``generation.json``."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cond_scale: float = 1.0
    rerank: int | None = None

    def __post_init__(self) -> None:
        _check_options(self.temperature, self.top_k, self.top_p)
        c = self.cond_scale
        if not _is_number(c) or not math.isfinite(c):
            raise ValueError(f"cond_scale must be finite, got {c!r}")
        r = self.rerank
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise ValueError(f"rerank must be >= 1 candidates per image or None, got {r!r}")

    def override(self, **fields: Any) -> SamplingConfig:
        """A copy with the given fields replaced (``top_k=None`` turns top-k off); an unknown
        name is a ``ValueError``."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown}; expected some of {names}")
        return dataclasses.replace(self, **fields)

    def describe(self) -> str:
        """One line: ``temperature 0.5, guidance 2, top-k off, top-p off, rerank off``."""
        parts = [("temperature", self.temperature), ("guidance", self.cond_scale),
                 ("top-k", self.top_k), ("top-p", self.top_p), ("rerank", self.rerank)]  # fmt: skip
        return ", ".join(f"{name} {'off' if v is None else f'{v:g}'}" for name, v in parts)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """A copy of ``logits`` (..., V) with all but the ``k`` largest of each row set to -inf
    (exactly k survive; ties at the cut are broken by ``torch.topk``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {k!r}")
    if k >= logits.shape[-1]:
        return logits.clone()
    keep = logits.topk(k, dim=-1).indices
    drop = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, keep, False)
    return logits.masked_fill(drop, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """A copy of ``logits`` (..., V) keeping, per row, the most likely tokens whose probability
    first reaches ``p`` (nucleus sampling); the top token is always kept, ``p = 1`` keeps all."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p == 1.0:
        return logits.clone()
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def guide(cond: torch.Tensor, uncond: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + cond_scale * (cond - uncond)``."""
    return uncond + cond_scale * (cond - uncond)


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    t = temperature
    if not _is_number(t) or not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    p = top_p
    if p is not None and (not _is_number(p) or not 0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def sample_next(
    logits: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Draw one token per row from logits ``(B, V)`` -> ``(B,)`` long ids. A temperature near 0
    tends to the argmax; inf or nan logits are a ``ValueError``."""
    _check_options(temperature, top_k, top_p)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (B, V), got {tuple(logits.shape)}")
    logits = logits.float()
    t = max(temperature, torch.finfo(logits.dtype).tiny)  # a smaller one is 0 in float32
    logits = logits - logits.amax(-1, keepdim=True)  # the best at 0: a tiny t is greedy
    if t != 1.0:  # x / 1 is x: one op less per step
        logits = logits / t
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    try:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    except RuntimeError:
        if torch.isfinite(probs).all():
            raise
        raise ValueError(  # inf or nan logits, e.g. from an enormous cond_scale
            "expected finite logits to sample from, got inf or nan (is cond_scale too large?)"
        ) from None


_COMPILED: weakref.WeakKeyDictionary[DALLE, Compiled] = weakref.WeakKeyDictionary()


def _decode(model: DALLE, codes: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
    return model.decode_step(codes, cache, start)


def _eager(model: DALLE, codes: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
    return model.unchecked_step(codes, cache)  # start == cache.pos


def compiled_step(model: DALLE) -> Compiled:
    """``model``'s cached step under ``torch.compile``, called as ``step(model, codes, cache,
    start)`` (see :meth:`DALLE.decode_step`): one per model, kept while the model lives,
    compiled on first use with dynamic shapes (every position and batch size > 1 share one
    graph; batch 1 gets its own). If compiling fails it warns once and runs the eager step.
    ``compile_s``: the seconds spent compiling so far."""
    if model not in _COMPILED:
        _COMPILED[model] = Compiled(_decode, "the decode step", fallback=_eager, dynamic=True)
    return _COMPILED[model]


@torch.no_grad()
def sample_codes(
    model: DALLE,
    text: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cond_scale: float = 1.0,
    prime: torch.Tensor | None = None,
    use_cache: bool = True,
    callback: Callable[[int, int], None] | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Generate image codes ``(B, image_len)`` for captions ``text`` (B, text_len).

    ``prime`` (B, r * grid) holds the codes of the first r rows; they are returned unchanged
    and the rest is sampled. ``cond_scale != 1`` turns on classifier-free guidance against the
    all-pad caption. The model runs in eval mode (restored afterwards); the generator must live
    on the model's device. The caller's tensors are never modified. ``callback(done, total)``,
    if given, is called after each sampled position (``total = image_len`` less the primed
    codes); an exception it raises stops sampling and propagates (how a server cancels).
    ``compile`` runs the cached step through ``torch.compile`` (:func:`compiled_step`; the
    uncached path ignores it): the first call per model pays the compile (batch 1 once more),
    later ones reuse it; its logits agree with the eager step's to float rounding, so a draw
    sitting on a probability boundary may differ.
    """
    _check_options(temperature, top_k, top_p)
    if not math.isfinite(cond_scale):
        raise ValueError(f"cond_scale must be finite, got {cond_scale!r}")
    cfg = model.cfg
    device = model.head.weight.device
    model.check_text(text)
    b, n = text.shape[0], cfg.image_len
    codes = torch.empty(b, n, dtype=torch.long, device=device)  # (B, image_len)
    n0 = 0
    if prime is not None:
        model.check_image(prime, b, n)
        n0 = prime.shape[1]
        if n0 % cfg.image_grid:
            raise ValueError(
                f"expected prime of whole rows (a multiple of {cfg.image_grid} codes), got {n0}"
            )
        codes[:, :n0] = prime.to(device)
    if n0 == n:
        return codes

    guided = cond_scale != 1.0
    text = text.to(device).long()
    if guided:  # rows [0, B) conditional, [B, 2B) unconditional
        text = torch.cat([text, torch.zeros_like(text)])  # (2B, text_len)

    def both(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if guided else x

    def draw(logits: torch.Tensor) -> torch.Tensor:  # (B or 2B, image_vocab) -> (B,)
        if guided:
            logits = guide(logits[:b].float(), logits[b:].float(), cond_scale)
        return sample_next(
            logits, generator=generator, temperature=temperature, top_k=top_k, top_p=top_p
        )

    was_training = model.training
    model.eval()
    try:
        if use_cache:
            cache = model.new_cache(text.shape[0])
            prefix = both(codes[:, :n0]) if n0 else None
            logits = model.prefill(text, cache, prefix)  # (B or 2B, image_vocab)
            step = compiled_step(model) if compile else _eager
            if compile:  # one compiled graph for every batch size > 1
                torch._dynamo.maybe_mark_dynamic(cache.k, 1)
                torch._dynamo.maybe_mark_dynamic(cache.v, 1)
            feed = torch.empty(text.shape[0], dtype=torch.long, device=device)  # a step's input
            for i in range(n0, n):
                drawn = draw(logits)  # (B,)
                codes[:, i] = drawn
                if callback is not None:
                    callback(i + 1 - n0, n - n0)
                if i < n - 1:
                    feed.view(-1, b).copy_(drawn)  # into both halves when guided
                    start = cache.pos
                    logits = step(model, feed, cache, start)
                    cache.pos = start + 1  # the compiled step leaves it to us
        else:
            o = cfg.text_vocab_total
            for i in range(n0, n):
                logits = model(text, both(codes[:, :i]))[:, -1, o:]  # full pass every step
                codes[:, i] = draw(logits)
                if callback is not None:
                    callback(i + 1 - n0, n - n0)
    finally:
        model.train(was_training)
    return codes
