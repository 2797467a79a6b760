"""The sampler: how image codes are drawn from the DALL-E transformer (Ramesh et al. 2021,
Sec. 2.2 and 2.3), in one typed object.

A :class:`Sampler` holds every sampling setting (declared, with their checks, in
``dalle.sampler_settings``) and draws codes with them, one at a time in raster order, from
``softmax(logits / temperature)`` after optional top-k, nucleus (top-p), locally typical and min-p filtering.
Classifier-free guidance (Ho & Salimans 2021, a later addition to DALL-E-style samplers) runs
the conditional rows and all-pad rows in one batch and mixes their logits ``uncond +
cond_scale * (cond - uncond)``; a new guidance rule is a subclass that overrides
:meth:`Sampler.conditions` (the caption rows to run) and :meth:`Sampler.combine` (how their
logits mix). Priming keeps the first rows of an image as given. With the KV cache each new
code costs one position (the model's :meth:`~dalle.models.dalle_transformer.DALLE.step`);
without it, one full forward pass (the baseline of ``benchmarks/speed.py``). Every random draw
uses the caller's generator. The step can run through ``torch.compile`` (:func:`compiled_step`).
A model folder ships its defaults as ``generation.json`` (see ``dalle.pipeline``); a caller
overrides single fields per call.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dalle.compiling import Compiled
from dalle.models.dalle_transformer import DALLE
from dalle.models.transformer import KVCache
from dalle.sampler_settings import SamplerSettings, SettingError

__all__ = [
    "Sampler",
    "SettingError",
    "compiled_step",
    "guide",
    "top_k_filter",
    "top_p_filter",
    "typical_filter",
]


class Sampler(SamplerSettings):
    """The settings of :class:`~dalle.sampler_settings.SamplerSettings` and the loop that draws
    codes with them; a guidance rule is a subclass (:meth:`conditions`, :meth:`combine`)."""

    # ----- one step: which rows run, how their logits mix, how a code is drawn -----

    def conditions(self, text: torch.Tensor) -> torch.Tensor:
        """The caption rows the model runs for captions ``text`` (B, text_len): ``(G * B,
        text_len)``, group g at rows ``[g * B, (g + 1) * B)``, the captions first. With
        guidance, the all-pad (unconditional) captions follow."""
        return torch.cat([text, torch.zeros_like(text)]) if self.cond_scale != 1.0 else text

    def combine(self, logits: torch.Tensor, batch: int) -> torch.Tensor:
        """The groups' logits ``(G * B, V)`` -> the logits to draw from ``(B, V)``."""
        if self.cond_scale == 1.0:
            return logits
        return guide(logits[:batch].float(), logits[batch:].float(), self.cond_scale)

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, V)`` -> float logits after the temperature and every filter that is on,
        the likeliest code of each row at 0 (a temperature near 0 tends to the argmax)."""
        logits = logits.float()
        t = max(self.temperature, torch.finfo(logits.dtype).tiny)  # a smaller one is 0 in fp32
        logits = logits - logits.amax(-1, keepdim=True)  # the best at 0: a tiny t is greedy
        if t != 1.0:  # x / 1 is x: one op less per step
            logits = logits / t
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, self.top_p)
        if self.typical_p is not None:
            logits = typical_filter(logits, self.typical_p)
        if self.min_p is not None:  # p / p_max >= min_p, with the best logit at 0
            logits = logits.masked_fill(logits < math.log(self.min_p), float("-inf"))
        return logits

    def draw(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One code per row of logits ``(B, V)`` -> ``(B,)`` long ids; inf or nan logits are a
        ``ValueError``."""
        if logits.ndim != 2:
            raise ValueError(f"expected logits of shape (B, V), got {tuple(logits.shape)}")
        probs = F.softmax(self.filter(logits), dim=-1)
        try:
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)
        except RuntimeError:
            if torch.isfinite(probs).all():
                raise
            raise ValueError(  # inf or nan logits, e.g. from an enormous cond_scale
                "expected finite logits to sample from, got inf or nan (is cond_scale too large?)"
            ) from None

    # ----- the loop -----

    @torch.no_grad()
    def sample(
        self,
        model: DALLE,
        text: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        prime: torch.Tensor | None = None,
        callback: Callable[[int, int], None] | None = None,
        compile: bool = False,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Image codes ``(B, image_len)`` for captions ``text`` (B, text_len).

        ``prime`` (B, r * grid) holds the codes of the first r rows; they are returned
        unchanged and the rest is sampled. The model runs in eval mode (restored afterwards);
        the generator must live on the model's device; the caller's tensors are never
        modified. ``callback(done, total)``, if given, is called after each sampled position
        (``total = image_len`` less the primed codes); an exception it raises stops sampling
        and propagates (how a server cancels). ``compile`` runs the cached step through
        ``torch.compile`` (:func:`compiled_step`; the uncached path ignores it): the first call
        per model pays the compile, later ones reuse it; its logits agree with the eager
        step's to float rounding, so a draw on a probability boundary may differ."""
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
        rows = self.conditions(text.to(device).long())  # (G * B, text_len)
        groups = rows.shape[0] // b
        was_training = model.training
        model.eval()
        try:
            if use_cache:
                self._cached(model, rows, codes, n0, generator, callback, compile)
            else:
                o = cfg.text_vocab_total
                for i in range(n0, n):
                    logits = model(rows, codes[:, :i].repeat(groups, 1))[:, -1, o:]  # full pass
                    codes[:, i] = self.draw(self.combine(logits, b), generator)
                    if callback is not None:
                        callback(i + 1 - n0, n - n0)
        finally:
            model.train(was_training)
        return codes

    def _cached(
        self,
        model: DALLE,
        rows: torch.Tensor,
        codes: torch.Tensor,
        n0: int,
        generator: torch.Generator | None,
        callback: Callable[[int, int], None] | None,
        compile: bool,
    ) -> None:
        """Fill ``codes[:, n0:]`` in place: prefill the cache with the caption rows and the
        primed codes, then one cached step per code."""
        b, n = codes.shape
        groups = rows.shape[0] // b
        cache = model.new_cache(rows.shape[0])
        prefix = codes[:, :n0].repeat(groups, 1) if n0 else None
        logits = model.prefill(rows, cache, prefix)  # (G * B, image_vocab)
        step = compiled_step(model) if compile else _step
        if compile:  # one compiled graph for every batch size > 1
            torch._dynamo.maybe_mark_dynamic(cache.k, 1)
            torch._dynamo.maybe_mark_dynamic(cache.v, 1)
        feed = torch.empty(rows.shape[0], dtype=torch.long, device=codes.device)  # a step's input
        for i in range(n0, n):
            drawn = self.draw(self.combine(logits, b), generator)  # (B,)
            codes[:, i] = drawn
            if callback is not None:
                callback(i + 1 - n0, n - n0)
            if i < n - 1:
                feed.view(groups, b).copy_(drawn)  # the same code into every group
                start = cache.pos
                logits = step(model, feed, cache, start)
                cache.pos = start + 1  # the compiled step leaves it to us


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """A copy of ``logits`` (..., V) with all but the ``k`` largest of each row set to -inf
    (exactly k survive; ties at the cut are broken by ``torch.topk``)."""
    if k >= logits.shape[-1]:
        return logits.clone()
    keep = logits.topk(k, dim=-1).indices
    drop = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, keep, False)
    return logits.masked_fill(drop, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """A copy of ``logits`` (..., V) keeping, per row, the most likely tokens whose probability
    first reaches ``p`` (nucleus sampling); the top token is always kept, ``p = 1`` keeps all."""
    return _keep_mass(logits, p, logits)


def typical_filter(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """A copy of ``logits`` (..., V) keeping, per row, the tokens whose surprisal ``-log p`` is
    nearest the row's entropy, nearest first, until their probability reaches ``mass``
    (locally typical sampling, Meister et al. 2023, Sec. 4); the nearest is always kept."""
    logp = F.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).nan_to_num(nan=0.0).sum(-1, keepdim=True)  # (..., 1)
    return _keep_mass(logits, mass, -(entropy + logp).abs())  # -|(-log p) - H|: higher first


def _keep_mass(logits: torch.Tensor, p: float, score: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` keeping, per row, the tokens of highest ``score`` whose probability
    first reaches ``p`` (the best-scored token always kept; ``p = 1`` keeps all)."""
    if p == 1.0:
        return logits.clone()
    order = score.sort(dim=-1, descending=True).indices
    probs = F.softmax(logits.gather(-1, order).float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better-scored tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def guide(cond: torch.Tensor, uncond: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + cond_scale * (cond - uncond)``."""
    return uncond + cond_scale * (cond - uncond)


_COMPILED: weakref.WeakKeyDictionary[DALLE, Compiled] = weakref.WeakKeyDictionary()


def _step(model: DALLE, codes: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
    return model.step(codes, cache, start)


def compiled_step(model: DALLE) -> Compiled:
    """``model``'s cached step (:meth:`DALLE.step`) under ``torch.compile``, called as
    ``step(model, codes, cache, start)``: one per model, kept while the model lives, compiled on
    first use with dynamic shapes (every position and batch size > 1 share one graph; batch 1
    gets its own). If compiling fails it warns once and runs the eager step. ``compile_s``: the
    seconds spent compiling so far."""
    if model not in _COMPILED:
        _COMPILED[model] = Compiled(_step, "the decode step", dynamic=True)
    return _COMPILED[model]
