"""WebDataset ``.tar`` shards of image-caption pairs, as ``img2dataset`` writes them: in each
shard, sample ``KEY`` is ``KEY.jpg`` (or ``.png``/``.jpeg``/``.webp``) with ``KEY.txt``
(``KEY.json`` and other members are ignored). Read with the ``webdataset`` package (extra
``[data]``).

``--data`` names shards by a path ending in ``.tar``, a brace pattern such as
``data/{00000..00099}.tar``, or a folder holding ``.tar`` files. A sample that cannot be read
(a broken image, an empty or missing caption) is skipped and counted, and so is a damaged
shard's remainder: a run never stops for one bad file.

Every process reads every shard, in the same order (reshuffled each epoch from the seed), so
data-parallel ranks see the same global batches and each keeps its own slice of them
(``dalle.train.distributed``): no sample is seen twice per epoch.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import torch

from dalle.images import image_to_tensor, load_image, resize_crop

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def is_shards(spec: str) -> bool:
    """Does ``--data`` name tar shards (rather than ``shapes`` or an image folder)?"""
    if spec.endswith(".tar"):
        return True
    folder = Path(spec)
    return folder.is_dir() and any(folder.glob("*.tar")) and not any(folder.glob("*.txt"))


def expand_shards(spec: str) -> list[str]:
    """The shard paths of ``spec`` (a file, a brace pattern or a folder), sorted; each must exist."""
    from braceexpand import braceexpand

    folder = Path(spec)
    if folder.is_dir():
        paths = sorted(str(p) for p in folder.glob("*.tar"))
    else:
        paths = list(braceexpand(spec))
    if not paths:
        raise ValueError(f"no .tar shards in {spec}")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(paths)} shards do not exist (first: {missing[0]})"
        )
    return paths


class ShardDataset(torch.utils.data.IterableDataset):
    """``{"image": (3, size, size) float in [0, 1], "caption": str}`` from tar shards, for
    ``epochs`` passes (``None``: forever). ``skipped`` counts what could not be read."""

    def __init__(self, spec: str, image_size: int, seed: int = 0, epochs: int | None = None):
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise ValueError(
                "reading .tar shards needs the webdataset package: pip install 'dalle[data]'"
            ) from None
        self.spec, self.urls = spec, expand_shards(spec)
        self.image_size, self.seed, self.epochs = image_size, seed, epochs
        self.skipped = 0
        self.first_error = ""

    def _skip(self, error: Exception) -> bool:
        self.skipped += 1
        self.first_error = self.first_error or f"{error.__class__.__name__}: {error}"
        return True  # keep reading

    def _decode(self, sample: dict, rng: random.Random) -> dict | None:
        key = sample.get("__key__", "?")
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        try:
            if data is None:
                raise ValueError(f"sample {key} has no image")
            lines = [x.strip() for x in sample.get("txt", b"").decode("utf-8").splitlines()]
            lines = [x for x in lines if x]
            if not lines:
                raise ValueError(f"sample {key} has no caption")
            try:
                image = resize_crop(load_image(io.BytesIO(data)), self.image_size)
            except ValueError:
                raise ValueError(f"sample {key} has no readable image") from None
        except (ValueError, UnicodeDecodeError) as e:
            self._skip(e)
            return None
        return {"image": image_to_tensor(image), "caption": rng.choice(lines)}

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        rng = random.Random(self.seed)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            urls = list(self.urls)
            if epoch:  # the first pass reads in order; later ones in a seeded order
                random.Random(self.seed + epoch).shuffle(urls)
            stream = wds.WebDataset(
                urls,
                handler=self._skip,
                shardshuffle=False,
                nodesplitter=lambda u: u,  # every rank reads every shard (see module docstring)
                workersplitter=wds.split_by_worker,
                empty_check=False,
            )
            for sample in stream:
                item = self._decode(sample, rng)
                if item is not None:
                    yield item
            epoch += 1

    @property
    def num_skipped(self) -> int:
        return self.skipped

    def report(self) -> str:
        """One line on what was skipped, or ``""``."""
        if not self.skipped:
            return ""
        return (
            f"skipped {self.skipped} unreadable samples or shard parts (first: {self.first_error})"
        )


def shard_captions(spec: str) -> list[str]:
    """Every non-empty caption line of every sample in the shards, read without decoding any
    image (for training a tokenizer); a damaged shard contributes what precedes the damage."""
    import tarfile

    captions: list[str] = []
    for url in expand_shards(spec):
        try:
            with tarfile.open(url) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".txt"):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        text = data.decode("utf-8", errors="replace")
                        captions += [x.strip() for x in text.splitlines() if x.strip()]
        except (tarfile.TarError, OSError, EOFError):
            continue
    if not captions:
        raise ValueError(f"no captions in the shards of {spec}")
    return captions
