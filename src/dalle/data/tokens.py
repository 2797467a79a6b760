"""Pre-encoded image tokens: the dVAE runs once per image, not once per epoch.

A token file is one safetensors file holding ``codes`` ``(N, h*w)`` (int16 when the codebook
fits, else int32) and, in its metadata, the captions (a JSON list of ``N`` strings), the code
grid side ``grid``, the codebook size ``vocab_size`` and ``vae_id``, the fingerprint of the dVAE
that made the codes (:func:`dalle.models.saving.fingerprint`). ``dalle encode`` writes it;
``dalle train --tokens FILE`` reads it and refuses codes made by another dVAE. Captions are
kept as text, so any tokenizer can be used with the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from dalle.io import write_bytes_atomic

FORMAT = "dalle-tokens-1"


@dataclass
class TokenSet:
    """``codes`` ``(N, grid*grid)`` integers in ``[0, vocab_size)`` (as stored: int16 or int32,
    memory-mapped when loaded) with one caption per row."""

    codes: torch.Tensor
    captions: list[str]
    grid: int
    vocab_size: int
    vae_id: str = ""  # fingerprint of the dVAE that made the codes ("" = unknown)

    def __post_init__(self) -> None:
        if self.codes.ndim != 2 or self.codes.shape[1] != self.grid * self.grid:
            raise ValueError(
                f"codes must be (N, {self.grid * self.grid}) for a {self.grid}x{self.grid} grid, "
                f"got {tuple(self.codes.shape)}"
            )
        if len(self.captions) != len(self.codes):
            raise ValueError(f"{len(self.codes)} code rows but {len(self.captions)} captions")
        if len(self.codes) and (self.codes.min() < 0 or self.codes.max() >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size})")
        if self.codes.is_floating_point():
            raise ValueError(f"codes must be integers, got {self.codes.dtype}")

    def __len__(self) -> int:
        return len(self.codes)

    def save(self, path: Path) -> None:
        """Write the token file atomically."""
        dtype = torch.int16 if self.vocab_size <= 2**15 else torch.int32
        metadata = {
            "format": FORMAT,
            "grid": str(self.grid),
            "vocab_size": str(self.vocab_size),
            "captions": json.dumps(self.captions),
            "vae_id": self.vae_id,
        }
        data = save({"codes": self.codes.to(dtype).contiguous()}, metadata=metadata)
        write_bytes_atomic(Path(path), data)

    @classmethod
    def load(cls, path: Path) -> TokenSet:
        """Read a token file; anything else is a one-line ``ValueError``. The codes are
        memory-mapped, not read: batches read only their rows (the file is scanned once, to
        check the code range)."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ValueError(f"token file {path} {what} (expected a file from `dalle encode`)")
        try:
            with safe_open(str(path), framework="pt") as f:  # validates the whole layout
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path}: not a dalle token file (written by `dalle encode`)")
            captions = json.loads(meta["captions"])
            grid, vocab_size = int(meta["grid"]), int(meta["vocab_size"])
            codes = _map_codes(path)
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable token file ({e})") from None
        return cls(codes, captions, grid, vocab_size, meta.get("vae_id", ""))


def _map_codes(path: Path) -> torch.Tensor:
    """The ``codes`` tensor of a safetensors file as a read-only memory map: the format is an
    8-byte little-endian header size, a JSON header with each tensor's dtype, shape and byte
    range, then the raw little-endian data."""
    import struct
    import warnings

    import numpy as np

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    info = header["codes"]
    dtype = {"I16": "<i2", "I32": "<i4", "I64": "<i8"}[info["dtype"]]
    begin, _ = info["data_offsets"]
    shape = tuple(info["shape"])
    if 0 in shape:
        return torch.zeros(shape, dtype=torch.int16)
    array = np.memmap(path, dtype=dtype, mode="r", offset=8 + size + begin, shape=shape)
    with warnings.catch_warnings():  # read-only by design: nothing writes to a token file
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


@torch.no_grad()
def encode_pairs(
    vae: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[str]]]
) -> TokenSet:
    """Encode ``(images (B, C, H, W), captions)`` batches with ``vae.encode`` into a token set."""
    codes, captions = [], []
    for images, caps in batches:
        codes.append(vae.encode(images).cpu())  # (B, h*w)
        captions += list(caps)
    if not codes:
        raise ValueError("no images to encode")
    from dalle.models.saving import fingerprint

    grid = vae.cfg.grid_size
    return TokenSet(torch.cat(codes), captions, grid, vae.cfg.vocab_size, fingerprint(vae))


def token_batches(
    text: torch.Tensor, codes: torch.Tensor, batch_size: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(text (B, text_len), codes (B, h*w))`` batches, reshuffled every epoch."""
    n = len(codes)
    if n < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} token rows, got {n}")
    epoch = 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield text[idx], codes[idx].long()  # only the batch's rows leave the file
        epoch += 1
