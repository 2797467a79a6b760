"""DALL-E: one decoder-only transformer over ``[text ; image]`` tokens (Ramesh et al. 2021,
Sec. 2.2, App. B.1).

Token layout. ``text`` is ``(B, text_len)`` tokenizer ids in ``[0, text_vocab)`` with pad id 0;
a pad at position j is embedded as its own token ``text_vocab + j``, so the text table has
``text_vocab_total = text_vocab + text_len`` rows. Text tokens get a learned position
embedding, image codes a learned row plus a learned column embedding. The output head covers
one combined vocabulary of ``vocab_total`` ids: text ids (pads included) in
``[0, text_vocab_total)``, image code ``i`` at id ``text_vocab_total + i``. Position t's logits
predict token t + 1, so positions ``t < text_len - 1`` predict text (image ids masked to -inf)
and the rest predict image codes (text ids masked to -inf).

Product codebooks (``image_palette`` > 0, our extension): code ``p * C + c`` is embedded as
``image_emb[p] + image_emb[P + c]``, and the head emits P pattern and C colour logits whose
sums are the code logits, so the model can emit a colour-pattern pair it never saw together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dalle.config import TransformerConfig
from dalle.models.checks import check_ids
from dalle.models.codebook import product_logits, split_codes
from dalle.models.saving import Saved
from dalle.models.transformer import KVCache, Transformer


class DALLE(Saved):
    """``(text, image codes) -> logits``; see the module docstring for the token layout."""

    config_class = TransformerConfig

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.text_emb = nn.Embedding(cfg.text_vocab_total, cfg.dim)
        self.text_pos_emb = nn.Embedding(cfg.text_len, cfg.dim)
        self.image_emb = nn.Embedding(cfg.image_factors, cfg.dim)
        self.row_emb = nn.Embedding(cfg.image_grid, cfg.dim)
        self.col_emb = nn.Embedding(cfg.image_grid, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg)
        self.head = nn.Linear(cfg.dim, cfg.text_vocab_total + cfg.image_factors)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(".proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def new_cache(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> KVCache:
        """An empty cache for ``batch_size`` rows, by default in the parameters' dtype and device."""
        p = self.head.weight
        return KVCache.create(
            self.cfg, batch_size, dtype=dtype or p.dtype, device=device or p.device
        )

    # ----- input checks -----

    def check_text(self, text: torch.Tensor) -> None:
        """ValueError unless ``text`` is ``(B, text_len)`` integer ids in ``[0, text_vocab)``."""
        n = self.cfg.text_len
        if text.ndim != 2 or text.shape[1] != n:
            raise ValueError(f"expected text of shape (B, {n}), got {tuple(text.shape)}")
        check_ids(text, "text ids", self.cfg.text_vocab)

    def check_image(self, image: torch.Tensor, batch: int, max_len: int) -> None:
        """ValueError unless ``image`` is ``(batch, n <= max_len)`` codes in ``[0, image_vocab)``."""
        if image.ndim != 2 or image.shape[0] != batch or image.shape[1] > max_len:
            raise ValueError(
                f"expected image codes of shape ({batch}, n <= {max_len}), got {tuple(image.shape)}"
            )
        check_ids(image, "image ids", self.cfg.image_vocab)

    # ----- embeddings and heads -----

    def text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """``(B, text_len)`` tokenizer ids -> ids with each pad at position j as ``text_vocab + j``."""
        pads = self.cfg.text_vocab + torch.arange(self.cfg.text_len, device=text.device)
        return torch.where(text == 0, pads, text.long())

    def _embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """``(B, text_len)`` ids -> ``(B, text_len, C)``: token plus position embeddings."""
        pos = torch.arange(self.cfg.text_len, device=text.device)
        return self.text_emb(self.text_tokens(text)) + self.text_pos_emb(pos)

    def _embed_image(
        self, image: torch.Tensor, first: int, drop_colours: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``(B, n)`` at image indices ``[first, first + n)`` -> ``(B, n, C)``. Where the
        boolean ``(B, n)`` mask ``drop_colours`` is set (product codebooks), the code's colour
        factor is left out of its embedding."""
        g, palette = self.cfg.image_grid, self.cfg.image_palette
        if palette:
            pattern, colour = split_codes(image.long(), palette)
            colours = self.image_emb(self.cfg.image_vocab // palette + colour)
            if drop_colours is not None:
                colours = colours.masked_fill(drop_colours[..., None], 0.0)
            codes = self.image_emb(pattern) + colours
        else:
            codes = self.image_emb(image.long())
        if image.shape[1] == 1:  # one step: rows of the tables
            return codes + self.row_emb.weight[first // g] + self.col_emb.weight[first % g]
        idx = first + torch.arange(image.shape[1], device=image.device)
        return codes + self.row_emb(idx // g) + self.col_emb(idx % g)  # (B, n, C)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(..., C)`` -> logits over text ids only ``(..., text_vocab_total)``."""
        o = self.cfg.text_vocab_total
        return F.linear(h, self.head.weight[:o], self.head.bias[:o])

    def image_factor_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(..., C)`` -> the head's image outputs ``(..., image_factors)``: the
        code logits, or for a product codebook the pattern then the colour logits."""
        o = self.cfg.text_vocab_total
        return F.linear(h, self.head.weight[o:], self.head.bias[o:])

    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(..., C)`` -> logits over image codes only ``(..., image_vocab)``."""
        factors = self.image_factor_logits(h)
        palette = self.cfg.image_palette
        return product_logits(factors, palette) if palette else factors

    def _restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask the combined logits ``(B, L, V)``: text positions to text ids, the rest to codes."""
        cfg = self.cfg
        predicts_text = torch.arange(logits.shape[1], device=logits.device) < cfg.text_len - 1
        is_text_id = torch.arange(cfg.vocab_total, device=logits.device) < cfg.text_vocab_total
        allowed = predicts_text[:, None] == is_text_id[None, :]  # (L, V)
        return logits.masked_fill(~allowed, float("-inf"))

    # ----- passes -----

    def hidden(
        self, text: torch.Tensor, image: torch.Tensor, drop_colours: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``text`` (B, text_len), ``image`` (B, n <= image_len) codes -> the final hidden
        states ``(B, text_len + n, C)``, before the head. Unchecked: :meth:`forward` checks
        the ids, and so does the trainer before its compiled loss. ``drop_colours`` (B, n), in
        training only, leaves those codes' colour factors out of the input (``_embed_image``)."""
        x = torch.cat([self._embed_text(text), self._embed_image(image, 0, drop_colours)], dim=1)
        return self.transformer(self.drop(x))  # (B, L, C)

    def shard_units(self) -> list[nn.Module]:
        """The blocks, each its own unit under FSDP (``dalle train --shard``)."""
        return list(self.transformer.layers)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``text`` (B, text_len), ``image`` (B, n <= image_len) codes -> restricted logits
        ``(B, text_len + n, vocab_total)``; position t predicts token t + 1."""
        self.check_text(text)
        self.check_image(image, text.shape[0], self.cfg.image_len)
        h = self.hidden(text, image)
        logits = torch.cat([self.text_logits(h), self.image_logits(h)], dim=-1)  # (B, L, V)
        return self._restrict(logits)

    # ----- sampling: prefill once, then one step per code -----

    def prefill(
        self, text: torch.Tensor, cache: KVCache, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fill ``cache`` from position 0 with the text and an optional image prefix
        ``(B, n < image_len)`` (both checked); returns logits ``(B, image_vocab)`` for image
        code n. ``cache.pos`` is then ``text_len + n``."""
        self.check_text(text)
        b = text.shape[0]
        x = self._embed_text(text)
        if image is not None:
            self.check_image(image, b, self.cfg.image_len - 1)
            x = torch.cat([x, self._embed_image(image, 0)], dim=1)  # (B, text_len + n, C)
        h = self.transformer(self.drop(x), cache, 0)
        return self.image_logits(h[:, -1])

    def step(self, codes: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        """Feed image code ``start - text_len`` for each row ``(B,)`` at input position
        ``start`` (``cache.pos`` after :meth:`prefill` or the last step); returns logits
        ``(B, image_vocab)`` for the next code. The caller advances ``cache.pos`` to
        ``start + 1``. Unchecked: the sampler feeds the codes it drew, after :meth:`prefill`
        checked the caption and the prefix. Under ``torch.compile`` it takes the form that
        compiles once for every step and batch size (:meth:`Transformer.decode`); eagerly, the
        fused attention kernels (the same logits to float rounding)."""
        x = self.drop(self._embed_image(codes[:, None], start - self.cfg.text_len))  # (B, 1, C)
        if torch.compiler.is_compiling():
            h = self.transformer.decode(x, cache, start)
        else:
            h = self.transformer(x, cache, start)
        return self.image_logits(h[:, -1])
