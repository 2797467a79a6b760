"""Typed configs, one dataclass per component, validated on construction, with named presets.

A config is the whole architecture: a saved model folder stores it as ``config.json`` and the
weights are loaded against it with strict key checking, never inferred from tensor shapes.
Reading and writing them is :mod:`dalle.config_io` (``to_dict``, ``from_dict``,
``load_config``, re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from dalle.config_io import from_dict as from_dict
from dalle.config_io import load_config as load_config
from dalle.config_io import to_dict as to_dict

C = TypeVar("C")


def require(ok: bool, message: str) -> None:
    """``ValueError(message)`` unless ``ok``: the check every config's ``__post_init__`` makes."""
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class VAEConfig:
    """Discrete VAE (Ramesh et al. 2021, Sec. 2.1 and App. A).

    ``downsample`` = 2 ** (groups - 1): the encoder max-pools between groups, so a 256 px image
    with ``downsample=8`` (4 groups) becomes a 32 x 32 grid of codes.

    ``palette`` > 0 makes the codebook a product (gain-shape coding, our extension, not the
    paper's): code ``k = pattern * palette + colour`` with ``vocab_size // palette >= 3``
    patterns. The encoder's logit over code k is the sum of a pattern logit (from a colour-blind
    stack) and a colour logit, and the decoder multiplies the brightness it draws from the
    pattern by the colour's palette entry, so a colour seen only on some outlines can be encoded
    and drawn on the others (the held-out colour-shape pairs of the shapes set). 0 is the
    paper's flat codebook.
    """

    image_size: int = 64
    channels: int = 3
    downsample: int = 4
    vocab_size: int = 512  # codebook size K
    n_hid: int = 16  # width of the first group; group g has n_hid * 2**g channels
    n_blk_per_group: int = 1
    n_init: int = 64  # decoder input width = codebook embedding size
    palette: int = 0  # colours of a product codebook (0: a flat codebook, as in the paper)

    def __post_init__(self) -> None:
        require(
            self.downsample in (2, 4, 8, 16),
            f"downsample must be 2, 4, 8 or 16, got {self.downsample}",
        )
        require(
            self.image_size > 0 and self.image_size % self.downsample == 0,
            f"image_size must be a positive multiple of downsample={self.downsample}, got {self.image_size}",
        )
        require(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        require(self.vocab_size >= 2, f"vocab_size must be >= 2, got {self.vocab_size}")
        require(
            self.n_hid >= 4 and self.n_hid % 4 == 0,
            f"n_hid must be a multiple of 4, got {self.n_hid}",
        )
        require(
            self.n_blk_per_group >= 1, f"n_blk_per_group must be >= 1, got {self.n_blk_per_group}"
        )
        require(self.n_init >= 1, f"n_init must be >= 1, got {self.n_init}")
        require(
            self.palette == 0
            or (self.palette >= 1 and self.vocab_size % self.palette == 0
                and self.vocab_size // self.palette >= 3),
            f"palette must be 0 or divide vocab_size={self.vocab_size} into >= 3 patterns, "
            f"got {self.palette}",
        )  # fmt: skip

    @property
    def patterns(self) -> int:
        """Patterns of a product codebook (``vocab_size // palette``); 0 for a flat one."""
        return self.vocab_size // self.palette if self.palette else 0

    @property
    def group_count(self) -> int:
        return int(math.log2(self.downsample)) + 1

    @property
    def grid_size(self) -> int:
        """Side of the code grid: ``image_size // downsample``."""
        return self.image_size // self.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


VAE_PRESETS: dict[str, VAEConfig] = {
    # Any pictures (the default for folders and shards): a flat codebook, as in the paper.
    # 64 px -> 16x16 codes of 1 024 (benchmarks/results/vae_presets.json has the table).
    "tiny": VAEConfig(vocab_size=1024, n_hid=32),
    "tiny-32": VAEConfig(image_size=32, downsample=2, vocab_size=1024, n_hid=32),  # -> 16x16
    "tiny-128": VAEConfig(image_size=128, downsample=8, vocab_size=1024, n_hid=32),  # -> 16x16
    # The built-in shapes (the default for --data shapes): 64x64 -> 16x16 codes of a gain-shape
    # product codebook (128 patterns x 8 colours), small enough to train in minutes on 2 cores.
    "shapes": VAEConfig(vocab_size=1024, palette=8),
    # OpenAI's released dVAE: 256 px, 4 groups of 2 blocks, n_hid 256, 8192 codes -> 32x32.
    "paper": VAEConfig(
        image_size=256, downsample=8, vocab_size=8192, n_hid=256, n_blk_per_group=2, n_init=128
    ),
}


def preset(presets: dict[str, C], name: str, kind: str) -> C:
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


ATTENTION_KINDS = ("full", "row", "column", "conv")


def paper_attention(depth: int) -> tuple[str, ...]:
    """The paper's layer pattern (Sec. 2.2, App. B.1): layers cycle row, column, row, row, and
    the last layer uses convolutional attention."""
    require(depth >= 1, f"depth must be >= 1, got {depth}")
    cycle = ("row", "column", "row", "row")
    return tuple(cycle[i % 4] for i in range(depth - 1)) + ("conv",)


@dataclass(frozen=True)
class TransformerConfig:
    """The DALL-E transformer over ``[text ; image]`` tokens (paper Sec. 2.2, App. B.1).

    ``text_vocab`` is the tokenizer's vocabulary, pad id 0 included; each pad is embedded as a
    per-position token ``text_vocab + j``, so the text table has ``text_vocab_total`` rows.
    Image codes sit after the text ids in the combined output vocabulary, at offset
    ``text_vocab_total``. ``attention`` names one mask per layer (see
    ``dalle.models.transformer.attention_mask``); ``None`` means :func:`paper_attention`.
    ``image_palette`` is the dVAE's ``palette``: for a product codebook the image codes are
    embedded, and their logits formed, as pattern plus colour (see ``dalle.models.dalle_transformer``).
    """

    text_vocab: int = 512  # a placeholder in presets: replace with the tokenizer's vocab_size
    text_len: int = 16
    image_vocab: int = 512
    image_grid: int = 16  # the image is image_grid x image_grid codes in raster order
    image_palette: int = 0  # the dVAE's palette (0: a flat codebook)
    dim: int = 256
    depth: int = 4
    heads: int = 8
    mlp_ratio: int = 4
    dropout: float = 0.0
    attention: tuple[str, ...] | None = None
    conv_kernel: int = 5

    # Options measured as losers (docs/experiments.md) and removed: saved folders hold them
    # off, at these values, and still load.
    REMOVED_FIELDS: ClassVar[dict[str, Any]] = {"text_alibi": False, "text_depth": 0}

    def __post_init__(self) -> None:
        require(self.text_vocab >= 2, f"text_vocab must be >= 2, got {self.text_vocab}")
        require(self.text_len >= 2, f"text_len must be >= 2, got {self.text_len}")
        require(self.image_vocab >= 2, f"image_vocab must be >= 2, got {self.image_vocab}")
        require(self.image_grid >= 1, f"image_grid must be >= 1, got {self.image_grid}")
        require(
            self.image_palette == 0
            or (self.image_palette >= 1 and self.image_vocab % self.image_palette == 0),
            f"image_palette must be 0 or divide image_vocab={self.image_vocab}, "
            f"got {self.image_palette}",
        )
        require(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        require(self.heads >= 1, f"heads must be >= 1, got {self.heads}")
        require(
            self.dim >= 1 and self.dim % self.heads == 0,
            f"dim must be a positive multiple of heads={self.heads}, got {self.dim}",
        )
        require(self.mlp_ratio >= 1, f"mlp_ratio must be >= 1, got {self.mlp_ratio}")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        require(
            self.conv_kernel >= 1 and self.conv_kernel % 2 == 1,
            f"conv_kernel must be a positive odd number, got {self.conv_kernel}",
        )
        # Saved configs hold the explicit pattern; JSON brings it back as a list.
        pattern = paper_attention(self.depth) if self.attention is None else tuple(self.attention)
        object.__setattr__(self, "attention", pattern)
        require(
            len(pattern) == self.depth,
            f"attention must name one mask per layer ({self.depth}), got {len(pattern)}",
        )
        bad = [k for k in pattern if k not in ATTENTION_KINDS]
        require(not bad, f"attention kinds must be in {ATTENTION_KINDS}, got {bad}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def image_len(self) -> int:
        return self.image_grid**2

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len

    @property
    def text_vocab_total(self) -> int:
        """Text ids plus one pad token per position."""
        return self.text_vocab + self.text_len

    @property
    def vocab_total(self) -> int:
        """Combined output vocabulary: text ids first, then image codes."""
        return self.text_vocab_total + self.image_vocab

    @property
    def image_factors(self) -> int:
        """Rows of the image embedding and head: one per code, or for a product codebook one
        per pattern plus one per colour."""
        if not self.image_palette:
            return self.image_vocab
        return self.image_vocab // self.image_palette + self.image_palette


IMAGE_TOWERS = ("conv", "vit")


@dataclass(frozen=True)
class CLIPConfig:
    """A contrastive text-image model (Radford et al. 2021) for reranking samples.

    The text tower is a causal transformer over tokenizer ids (``text_vocab`` with pad id 0)
    pooled at each caption's last real token. The image tower is ``conv`` (stride-2 3x3
    convolutions of ``conv_widths``, then the flattened map, so positions survive pooling) or
    ``vit`` (``patch`` x ``patch`` patches, a class token, ``image_depth`` blocks).
    Both towers end in a projection to ``embed_dim``.
    """

    text_vocab: int = 512  # a placeholder in presets: replace with the tokenizer's vocab_size
    text_len: int = 18
    text_dim: int = 128
    text_depth: int = 2
    text_heads: int = 4
    image_size: int = 64
    channels: int = 3
    image_tower: str = "conv"
    conv_widths: tuple[int, ...] = (16, 32, 64, 128)
    patch: int = 8
    image_dim: int = 128
    image_depth: int = 4
    image_heads: int = 4
    embed_dim: int = 128

    def __post_init__(self) -> None:
        require(self.text_vocab >= 2, f"text_vocab must be >= 2, got {self.text_vocab}")
        require(self.text_len >= 1, f"text_len must be >= 1, got {self.text_len}")
        for name in ("text", "image"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            require(
                heads >= 1 and dim >= 1 and dim % heads == 0,
                f"{name}_dim must be a positive multiple of {name}_heads={heads}, got {dim}",
            )
            require(getattr(self, f"{name}_depth") >= 1, f"{name}_depth must be >= 1")
        require(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        require(
            self.image_tower in IMAGE_TOWERS,
            f"image_tower must be one of {IMAGE_TOWERS}, got {self.image_tower!r}",
        )
        widths = tuple(self.conv_widths)  # JSON brings it back as a list
        object.__setattr__(self, "conv_widths", widths)
        require(
            len(widths) >= 1 and all(w >= 1 for w in widths),
            f"conv_widths must be positive, got {widths}",
        )
        step = 2 ** len(widths) if self.image_tower == "conv" else self.patch
        require(
            step >= 1 and self.image_size > 0 and self.image_size % step == 0,
            f"image_size must be a positive multiple of {step} for the {self.image_tower} "
            f"tower, got {self.image_size}",
        )
        require(self.embed_dim >= 1, f"embed_dim must be >= 1, got {self.embed_dim}")


CLIP_PRESETS: dict[str, CLIPConfig] = {
    # 64 px shapes on 2 CPU cores: a 4-stage conv net (64 -> 4 px) and a 2-layer text tower.
    "tiny": CLIPConfig(),
    "tiny-vit": CLIPConfig(image_tower="vit"),
}


TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    # 18 caption tokens (the longest shapes caption is 17) + 16x16 codes of the tiny dVAE;
    # small enough to learn the shapes in minutes on 2 CPU cores (~9k tokens/s in training).
    # Full causal attention: on a CPU the sparse masks save no time (SDPA with a dense mask).
    # Depth 3, not 4: in the demo's 6 minutes it runs 1.67x the steps and it drew 88.8 /
    # 86.8 / 77.4 % (seen / held-out / two-object) against depth 4's 70.7 / 67.1 / 45.2 % on
    # the same machine; depth 2 86.2 / 82.9 / 73.8 % (docs/results.md#learning-curves).
    "tiny": TransformerConfig(text_len=18, dim=128, depth=3, heads=4, attention=("full",) * 3),
    "small": TransformerConfig(dim=512, depth=12, heads=8),
    # The paper's 12B model (App. B.1): 64 layers, 62 heads of 64, 256 BPE tokens (16384 ids),
    # 32x32 codes from an 8192-code dVAE.
    "paper": TransformerConfig(
        text_vocab=16384,
        text_len=256,
        image_vocab=8192,
        image_grid=32,
        dim=3968,
        depth=64,
        heads=62,
    ),
}
