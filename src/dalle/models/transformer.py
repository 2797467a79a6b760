"""The DALL-E transformer body: pre-LayerNorm decoder blocks with sparse attention masks and a
preallocated key/value cache (Ramesh et al. 2021, Sec. 2.2, App. B.1 and Fig. 11).

The sequence is ``text_len`` caption tokens followed by ``grid * grid`` image tokens in raster
order. Each layer uses one of four masks (:func:`attention_mask`); all of them are causal, so a
cache filled position by position gives exactly the logits of one full forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dalle.config import ATTENTION_KINDS, TransformerConfig


def attention_mask(
    kind: str, text_len: int, grid: int, conv_kernel: int = 5, device: torch.device | None = None
) -> torch.Tensor:
    """``(T, T)`` bool mask, ``True`` where query row may attend to key column; T = text_len + grid**2.

    Positions are input positions: ``p < text_len`` is caption token p, ``p = text_len + i`` is
    image token i = (r, c) = (i // grid, i % grid). A text query attends causally to text only.
    An image query at (r, c) attends to every text token and to the image keys:

    - ``full``: every earlier image token (plain causal attention);
    - ``row``: (r, c') with c' <= c, the row so far;
    - ``column``: (r', c) with r' <= r, the column so far;
    - ``conv``: (r', c') with r - (k - 1) <= r' <= r and |c' - c| <= k // 2 that come no later
      in raster order: a k-row, k-column window over the past, k = ``conv_kernel``.

    Every query sees itself, so no row is empty.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    if text_len < 1 or grid < 1 or conv_kernel < 1 or conv_kernel % 2 == 0:
        raise ValueError(
            f"expected text_len >= 1, grid >= 1 and an odd conv_kernel, got {text_len}, {grid}, {conv_kernel}"
        )
    pos = torch.arange(text_len + grid * grid, device=device)
    q, k = pos[:, None], pos[None, :]  # (T, 1), (1, T)
    causal = k <= q
    if kind == "full":
        return causal
    qr, qc = (q - text_len) // grid, (q - text_len) % grid  # only read for image positions
    kr, kc = (k - text_len) // grid, (k - text_len) % grid
    if kind == "row":
        image_ok = (kr == qr) & (kc <= qc)
    elif kind == "column":
        image_ok = (kc == qc) & (kr <= qr)
    else:
        window = (kr >= qr - (conv_kernel - 1)) & (kr <= qr)
        image_ok = window & ((kc - qc).abs() <= conv_kernel // 2) & causal
    key_is_image = k >= text_len
    image_query = ~key_is_image | image_ok  # all text, plus the allowed image keys
    return torch.where(q >= text_len, image_query, causal)


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated: ``k``, ``v`` are
    ``(depth, B, heads, max_len, head_dim)`` and positions ``[0, pos)`` hold valid entries."""

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0

    @classmethod
    def create(
        cls,
        cfg: TransformerConfig,
        batch_size: int,
        *,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        max_len = cfg.seq_len if max_len is None else max_len
        if batch_size < 1 or not 1 <= max_len <= cfg.seq_len:
            raise ValueError(
                f"expected batch_size >= 1 and max_len in [1, {cfg.seq_len}], got {batch_size}, {max_len}"
            )
        shape = (cfg.depth, batch_size, cfg.heads, max_len, cfg.head_dim)
        return cls(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget every position; the buffers are kept (entries past ``pos`` are never read)."""
        self.pos = 0

    def update(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, in_place: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``layer``'s keys and values ``(B, H, T, D)`` at positions ``[start, start + T)``
        and return its keys and values ``[0, start + T)`` (views of the buffers). ``in_place``
        writes through the stacked buffers themselves (``index_put_``), never through a view of
        them: a compiled step would otherwise copy whole buffers at every step."""
        end = start + k.shape[2]
        if in_place:
            b, h, dev = k.shape[0], k.shape[1], k.device
            at = (torch.tensor(layer, device=dev), torch.arange(b, device=dev)[:, None, None],
                  torch.arange(h, device=dev)[None, :, None],
                  torch.arange(start, end, device=dev))  # fmt: skip
            self.k.index_put_(at, k.to(self.k.dtype))  # indices broadcast to (B, H, T)
            self.v.index_put_(at, v.to(self.v.dtype))
        else:
            self.k[layer, :, :, start:end] = k
            self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D)) v`` over the keys ``mask`` allows, spelled out: ``q``
    (B, H, T, D), ``k``, ``v`` (B, H, S, D), ``mask`` (T, S) bool -> (B, H, T, D). What
    ``scaled_dot_product_attention`` computes (to float rounding), in ops that Inductor fuses
    into one loop per layer, where the fused kernel would stay one opaque call per layer."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` with a boolean mask
    (in the compiled decode step, :func:`explicit_attention`)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
        is_causal: bool = False,
        compiled: bool = False,
    ) -> torch.Tensor:
        """``x`` (B, T, C) at positions ``[start, start + T)``; ``mask`` (T, S) rows of those
        queries over keys ``[0, S)`` (``None``: every key); with a ``cache`` the keys and values
        are this ``layer``'s there. ``compiled``: the form written for ``torch.compile`` (the
        cache written in place, :func:`explicit_attention`)."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        if cache is not None:  # (B, H, T, D) written at start, (B, H, S, D) read back
            k, v = cache.update(layer, start, k, v, in_place=compiled)
            k, v = k.to(q.dtype), v.to(q.dtype)
        p = self.dropout if self.training else 0.0
        if compiled and not p:
            y = explicit_attention(q, k, v, mask)
        elif is_causal:  # the same mask, but lets fused kernels skip reading it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        self.fc = nn.Linear(dim, mlp_ratio * dim)
        self.proj = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, each branch followed by dropout.

    Shared by the DALL-E transformer and both CLIP towers; ``kind`` names the attention mask
    the owner applies (the block itself only receives the mask)."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0, kind: str = "full"
    ):
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
        is_causal: bool = False,
        compiled: bool = False,
    ) -> torch.Tensor:
        y = self.attn(self.norm1(x), mask, cache, layer, start, is_causal, compiled)
        x = x + self.drop(y)
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """``depth`` blocks and a final LayerNorm: ``(B, T, C)`` -> ``(B, T, C)``.

    The masks are non-persistent buffers, one per kind in use, rebuilt from the config.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, kind) for kind in cfg.attention
        )
        self.norm = nn.LayerNorm(cfg.dim)
        # Training only: each block keeps its input alone for the backward pass and runs
        # again there (torch.utils.checkpoint), trading compute for activation memory.
        self.checkpointing = False
        for kind in sorted(set(cfg.attention)):
            mask = attention_mask(kind, cfg.text_len, cfg.image_grid, cfg.conv_kernel)
            self.register_buffer(f"mask_{kind}", mask, persistent=False)

    def mask(self, kind: str) -> torch.Tensor:
        """The ``(seq_len, seq_len)`` bool mask of ``kind``."""
        return getattr(self, f"mask_{kind}")

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, start: int = 0
    ) -> torch.Tensor:
        """``x`` (B, T, C): the inputs at positions ``[start, start + T)``.

        Without a cache ``start`` must be 0. With one, each layer writes its keys and values at
        ``[start, start + T)``, attends over ``[0, start + T)``, and ``cache.pos`` becomes
        ``start + T``; ``start`` may rewind below ``cache.pos`` but never skip past it.
        """
        b, t, c = x.shape
        end = start + t
        if c != self.cfg.dim or t < 1:
            raise ValueError(
                f"expected x of shape (B, T >= 1, {self.cfg.dim}), got {tuple(x.shape)}"
            )
        if cache is None and start != 0:
            raise ValueError(f"without a cache start must be 0, got {start}")
        if end > self.cfg.seq_len:
            raise ValueError(f"positions [{start}, {end}) exceed seq_len {self.cfg.seq_len}")
        if cache is not None:
            self._check_cache(cache, b, start, end)
        for i, layer in enumerate(self.layers):
            full = layer.kind == "full"
            causal = full and start == 0  # the square causal mask: fused kernels skip reading it
            # One new query under full attention sees every key so far: no mask at all.
            mask = None if full and t == 1 else self.mask(layer.kind)[start:end, :end]
            if self.checkpointing and cache is None and torch.is_grad_enabled():
                x = checkpoint(layer, x, mask, None, i, start, causal, use_reentrant=False)
            else:
                x = layer(x, mask, cache, i, start, causal)
        if cache is not None:
            cache.pos = end
        return self.norm(x)

    def decode(self, x: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        """:meth:`forward` with a cache, written for ``torch.compile`` with dynamic shapes, so
        that one compiled graph serves every step and batch size: each layer writes its keys
        and values in place and attends over ``[0, start + T)`` with
        :func:`explicit_attention` through its mask's rows. Unchecked, and ``cache.pos`` is
        the caller's to advance."""
        end = start + x.shape[1]
        for i, layer in enumerate(self.layers):
            x = layer(x, self.mask(layer.kind)[start:end, :end], cache, i, start, False, True)
        return self.norm(x)

    def _check_cache(self, cache: KVCache, batch: int, start: int, end: int) -> None:
        cfg = self.cfg
        expected = (cfg.depth, batch, cfg.heads, cfg.head_dim)
        got = (cache.k.shape[0], cache.k.shape[1], cache.k.shape[2], cache.k.shape[4])
        if got != expected:
            raise ValueError(
                f"expected a cache of (depth, B, heads, head_dim) {expected}, got {got}"
            )
        if not 0 <= start <= cache.pos:
            raise ValueError(f"start must be in [0, cache.pos={cache.pos}], got {start}")
        if end > cache.max_len:
            raise ValueError(f"positions up to {end} exceed the cache's max_len {cache.max_len}")
