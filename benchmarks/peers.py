"""The peer that ``benchmarks/speed.py`` measures beside our model in the same run:
DALLE-pytorch 1.6.6 (lucidrains/DALLE-pytorch), installed from ``requirements-peers.txt``.

Theirs is built with our dimensions (d_model, depth, heads, head size, text length, codebook,
image grid) and full causal attention; what its constructor does not let us match is listed in
:data:`DIFFERENCES`, and each model's FLOPs per token is counted so the ratios also hold in
FLOP/s. Its image tokenizer is its own random-weight ``DiscreteVAE`` at the smallest settings
whose feature map is the image grid: nothing is downloaded, and training is fed image codes,
which its ``forward`` accepts in place of pixels (a 2-D ``image`` skips the VAE).

FLOPs per token, forward, counted as ours are in ``speed.py``: ``2 * N`` for the ``N``
parameters of the transformer blocks and the image rows of the output head (both models also
compute text logits at image positions in training; neither count includes them), plus
``2 * depth * T * heads * dim_head`` for attention scores and mixing over the causal average
context ``T / 2``; training is 3x forward.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dalle.config import TransformerConfig

NAME = "DALLE-pytorch"
VERSION = "1.6.6"
NOT_INSTALLED = "DALLE-pytorch not installed: see benchmarks/requirements-peers.txt"

DIFFERENCES = {
    "feed-forward": "ours GELU MLP d->4d->d (8 d^2 weights); theirs GEGLU d->2x4d, x*gelu(gate),"
    " 4d->d (12 d^2 weights): the same hidden width 1024, since DALLE() passes no ff_mult and"
    " its Transformer's default is 4",
    "attention": "both 8 heads of 32; ours fused scaled_dot_product_attention with q/k/v biases;"
    " theirs einsum, a materialised causal mask and softmax, no q/k/v bias",
    "positions": "ours learned text, row and column embeddings; theirs rotary on 30 of the 32"
    " dims per head (10 for a 1-D text position, 20 for the 2-D image position), applied to q,"
    " k and v",
    "extras in theirs": "token shift (a quarter of the channels from the token above, a quarter"
    " from the left, before every attention and feed-forward), LayerScale on every branch, a"
    " <bos> token (both train on text_len + image_len positions: the last one is dropped)",
    "output head": "in training ours computes the 528 text logits (512 text + 16 pad ids) at"
    " text positions and the 512 code logits at image positions only, theirs all 1040 at every"
    " position, masked (neither count includes the text rows); in sampling ours only the 512"
    " image logits of the newest position, theirs all 1040 (at every position of the prefix on"
    " its default path)",
    "sampling": "ours a preallocated KV cache (Sampler.sample, full softmax; with --compile"
    " the cached step through torch.compile, attention as matmuls and softmax fused by"
    " Inductor); theirs"
    " generate_images: without guidance it recomputes the whole prefix every step (use_cache"
    " is ignored there), with cond_scale != 1 and use_cache it concatenates K/V per step;"
    " top-k keeps half the logits; a tiny VAE decode (16 channels, 2x upsampling) ends the call",
}


@dataclass
class Peer:
    """The imported ``dalle_pytorch`` package and what had to be done to import it."""

    module: types.ModuleType
    version: str
    notes: list[str]


def load_peer() -> Peer | None:
    """Import ``dalle_pytorch``; ``None`` when it is not installed, ImportError when it is but
    a package of ``requirements-peers.txt`` is missing.

    Its VQGAN module imports taming, whose ``taming/main.py`` runs ``import torchvision``
    (only for image grids in training callbacks we never call), and torchvision cannot be
    installed beside CPU torch 2.13. If torchvision is missing, an empty stub module answers
    that one import and is removed from ``sys.modules`` again afterwards. pytorch-lightning is
    imported first, so torchmetrics' probe for a real torchvision runs before the stub exists.
    """
    if importlib.util.find_spec("dalle_pytorch") is None:
        return None
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources and pytorch-lightning 1.8 deprecations
        importlib.import_module("pytorch_lightning")
        warnings.simplefilter("ignore")  # again: that import puts its own filters first
        stub = importlib.util.find_spec("torchvision") is None
        if stub:
            sys.modules["torchvision"] = types.ModuleType("torchvision")
            notes.append(
                "torchvision is not installed (no release for CPU torch 2.13): an empty stub "
                "module answered taming's unused `import torchvision` while dalle_pytorch "
                "was imported"
            )
        try:
            module = importlib.import_module("dalle_pytorch")
        finally:
            if stub:
                del sys.modules["torchvision"]
    version = module.__version__
    if version != VERSION:
        notes.append(f"expected {NAME} {VERSION}, found {version}: figures are for {version}")
    return Peer(module, version, notes)


def build(peer: Peer, cfg: TransformerConfig) -> nn.Module:
    """Their ``DALLE`` with ``cfg``'s dimensions and full attention, random weights, eval mode.

    Its constructor takes a VAE and reads the image grid and codebook size from it:
    ``image_size // 2**num_layers`` must be ``cfg.image_grid``, so the grid must be a power of 2.
    """
    grid = cfg.image_grid
    if grid & (grid - 1) or any(kind != "full" for kind in cfg.attention):
        raise ValueError(
            f"expected a power-of-2 image grid and full attention, got {grid}, {cfg.attention}"
        )
    dp = peer.module
    vae = dp.DiscreteVAE(
        image_size=2 * grid, num_tokens=cfg.image_vocab, codebook_dim=16, num_layers=1,
        hidden_dim=16,
    )  # fmt: skip
    model = dp.DALLE(
        dim=cfg.dim, vae=vae, num_text_tokens=cfg.text_vocab, text_seq_len=cfg.text_len,
        depth=cfg.depth, heads=cfg.heads, dim_head=cfg.head_dim, attn_types=("full",),
    )  # fmt: skip
    return model.eval()


def flops_per_token(model: nn.Module) -> float:
    """Forward FLOPs per token of their ``DALLE`` (see the module docstring)."""
    head = model.to_logits[1].weight[model.num_text_tokens :]  # (image_vocab, C)
    weights = sum(p.numel() for p in model.transformer.parameters()) + head.numel()
    layers = [m for m in model.transformer.modules() if hasattr(m, "to_qkv")]  # attention
    inner = layers[0].to_qkv.out_features // 3  # heads * dim_head
    return 2 * weights + 2 * len(layers) * model.total_seq_len * inner


def objective(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int
) -> tuple[torch.Tensor, dict]:
    """Their weighted text + image cross-entropy on ``(text (B, text_len), codes (B, n))``."""
    text, codes = batch
    return model(text, image=codes, return_loss=True), {}


def time_sampling(
    model: nn.Module,
    text: torch.Tensor,
    repeats: int,
    timer: Callable[[Callable[[], None], int], float],
    cond_scale: float = 1.0,
    use_cache: bool = False,
) -> float:
    """Median seconds of ``generate_images(text, cond_scale, use_cache)``, same seed each time.

    ``text`` is cloned per call: with guidance their forward zeroes its caller's text in place.
    """

    def draw() -> None:
        torch.manual_seed(0)  # their Gumbel sampler draws from the global generator
        model.generate_images(text.clone(), cond_scale=cond_scale, use_cache=use_cache)

    return timer(draw, repeats)


def measure(
    peer: Peer,
    configs: dict[str, TransformerConfig],
    repeats: int,
    timer: Callable[[Callable[[], None], int], float],
    time_step: Callable[..., float],
    bf16: bool = False,
) -> dict[str, dict[str, float]]:
    """Their figures per config name: image tokens/s sampling at batch 8 on the default path
    (``default``), with guidance (scale 3) and the cache (``guided cache``), training tokens/s
    at batch 32 from codes with AdamW (``training``; with ``bf16`` also under bf16 autocast,
    ``training bf16``), and forward FLOPs per token.

    ``timer(fn, repeats)`` and ``time_step(model, objective, batch, repeats)`` are speed.py's,
    so both models are timed alike. The default path is timed once after a warm-up, as our
    uncached sampling is.
    """
    out = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = build(peer, cfg)
        text = torch.randint(1, cfg.text_vocab, (8, cfg.text_len))
        tokens = 8 * cfg.image_len
        default = time_sampling(model, text, 1, timer)
        guided = time_sampling(model, text, repeats, timer, cond_scale=3.0, use_cache=True)
        text = torch.randint(1, cfg.text_vocab, (32, cfg.text_len))
        codes = torch.randint(0, cfg.image_vocab, (32, cfg.image_len))
        step = time_step(model, objective, (text, codes), repeats)
        if bf16:  # their training under bf16 autocast too, timed alike
            step_bf16 = time_step(model, objective, (text, codes), repeats, bf16=True)
        out[name] = {
            "default": round(tokens / default, 1),
            "guided cache": round(tokens / guided, 1),
            "training": round(32 * model.total_seq_len / step),
            **({"training bf16": round(32 * model.total_seq_len / step_bf16)} if bf16 else {}),
            "flops_per_token_forward": round(flops_per_token(model)),
        }
    return out
