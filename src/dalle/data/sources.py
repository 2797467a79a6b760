"""Image-caption datasets as the trainers read them: one small interface, one class per kind.

Every stage reads its data through :class:`ImageTextData`: captions for the tokenizer, endless
shuffled batches for the dVAE and CLIP, one pass for encoding, a few images for reconstruction
grids and evaluation, example captions, and optionally a rule for which captions describe
which images (CLIP's positives). The trainers never ask which dataset they serve; what is
special about a dataset (the shapes' caption grammar, say) stays in its own class.

:func:`open_data` turns the command line's ``--data`` value into one: ``shapes`` (the built-in
dataset), a WebDataset shard spec, or a folder of images with ``.txt`` captions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch

from dalle.data.batches import endless_batches

BatchDict = dict  # {"image": (B, C, H, W) float in [0, 1], "caption": list[str], ...}


def _pairs(items: list[dict]) -> BatchDict:
    return {
        "image": torch.stack([x["image"] for x in items]),
        "caption": [x["caption"] for x in items],
    }


def _each(dataset: torch.utils.data.Dataset) -> Iterator[dict]:
    """Each readable item of ``dataset`` once, in order."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        stream = iter(dataset)
    else:
        get = getattr(dataset, "get", dataset.__getitem__)
        stream = (get(i) for i in range(len(dataset)))  # type: ignore[arg-type]
    return (item for item in stream if item is not None)


def example_captions(captions: list[str], n: int = 8, seed: int = 0) -> list[str]:
    """``n`` distinct ``captions`` (or all there are), drawn with ``seed``."""
    distinct = sorted(set(captions))
    return random.Random(seed).sample(distinct, min(n, len(distinct)))


class ImageTextData:
    """An image-caption dataset. Subclasses supply :meth:`_dataset` and :meth:`captions`;
    the rest has defaults that suit any folder of pictures."""

    name = "data"
    vae_preset = "tiny"  # the dVAE preset (dalle.config.VAE_PRESETS) that suits this data
    caption_grammar: str | None = None  # names the judge of dalle.eval that reads its captions

    def __init__(self) -> None:
        self._opened: torch.utils.data.Dataset | None = None

    def _dataset(self, image_size: int, seed: int, endless: bool) -> torch.utils.data.Dataset:
        """Items ``{"image": (C, H, W), "caption": str, ...}``; a map-style dataset may return
        ``None`` from ``get(i)`` for an unreadable item."""
        raise NotImplementedError

    def _open(self, image_size: int, seed: int, endless: bool) -> torch.utils.data.Dataset:
        self._opened = self._dataset(image_size, seed, endless)
        return self._opened

    def captions(self) -> list[str]:
        """Every caption, for training the tokenizer (images are not decoded)."""
        raise NotImplementedError

    def collate(self, items: list[dict]) -> BatchDict:
        return _pairs(items)

    def batches(self, image_size: int, batch_size: int, seed: int = 0) -> Iterator[BatchDict]:
        """Endless training batches, reshuffled every epoch with ``seed``."""
        dataset = self._open(image_size, seed, endless=True)
        return endless_batches(dataset, batch_size, self.collate, seed)

    def items(self, image_size: int, seed: int = 0) -> Iterator[dict]:
        """Each readable item once, in order (unreadable ones are left out and reported)."""
        return _each(self._open(image_size, seed, endless=False))

    def image_batches(
        self, image_size: int, batch_size: int, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """``(images (B, C, H, W), captions)`` over :meth:`items`, each item once."""
        chunk: list[dict] = []
        for item in self.items(image_size, seed):
            chunk.append(item)
            if len(chunk) == batch_size:
                batch = _pairs(chunk)
                yield batch["image"], batch["caption"]
                chunk = []
        if chunk:
            batch = _pairs(chunk)
            yield batch["image"], batch["caption"]

    def eval_images(self, n: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
        """``n`` images (or all there are) and their captions, for grids and evaluation."""
        dataset = self._dataset(image_size, 0, endless=False)  # report() stays the training's
        items = []
        for item in _each(dataset):
            items.append(item)
            if len(items) == n:
                break
        if not items:
            if not isinstance(dataset, torch.utils.data.IterableDataset):
                dataset[0]  # a map-style dataset's own error says how many pairs it tried
            raise ValueError(f"{self.describe()}: no image + caption pair could be read")
        batch = _pairs(items)
        return batch["image"], batch["caption"]

    def examples(self, n: int = 8, seed: int = 0) -> list[str]:
        """``n`` distinct captions of the dataset, drawn with ``seed``: prompts to show a user."""
        return example_captions(self.captions(), n, seed)

    def positives(self, batch: BatchDict) -> torch.Tensor | None:
        """``(B, B)`` bool: caption i describes image j. ``None``: only its own caption does
        (or the same text), the rule CLIP's loss falls back to."""
        return None

    def report(self) -> str:
        """One line on what was left out of the last pass, or ``""``."""
        report = getattr(self._opened, "report", None)
        return report() if report else ""

    @property
    def num_skipped(self) -> int:
        return int(getattr(self._opened, "num_skipped", 0))

    def describe(self) -> str:
        return self.name


class ShapesData(ImageTextData):
    """The built-in captioned shapes (shared/SHAPES.md), ``train`` split: ``num`` samples for a
    pass (captions, encoding), an endless stream for training. Scenes carry their object lists,
    so CLIP's positives are exact: a caption describes every scene it matches."""

    name = "shapes"
    vae_preset = "shapes"  # gain-shape codes: a colour seen on some outlines draws on others
    caption_grammar = "shapes"  # shared/SHAPES.md: dalle.eval.shapes_fidelity reads its pixels

    def __init__(self, num: int = 20_000, seed: int = 0):
        super().__init__()
        if num < 1:
            raise ValueError(f"num must be a positive number of samples, got {num}")
        self.num, self.seed = num, seed

    def _check_size(self, image_size: int) -> None:
        from dalle.data.shapes import CANVAS

        if image_size != CANVAS:
            raise ValueError(
                f"--data shapes has {CANVAS} px images; the model expects {image_size} px"
            )

    def _dataset(self, image_size: int, seed: int, endless: bool) -> torch.utils.data.Dataset:
        from dalle.data.shapes import ShapesDataset, ShapesStream

        self._check_size(image_size)
        if endless:  # a generated stream: the seed draws the scenes
            return ShapesStream("train", seed=seed)
        return ShapesDataset("train", self.num, self.seed)

    def captions(self) -> list[str]:
        from dalle.data.shapes import make_sample

        return [make_sample(self.seed, "train", i).caption for i in range(self.num)]

    def collate(self, items: list[dict]) -> BatchDict:
        from dalle.data.shapes import collate

        return collate(items)

    def eval_images(self, n: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
        """Held out of every training run: half unseen ``train`` scenes, half ``holdout``."""
        from dalle.data.shapes import eval_set

        self._check_size(image_size)
        return eval_set(n)

    def examples(self, n: int = 8, seed: int = 0) -> list[str]:
        """Mostly ``train`` captions, a quarter ``holdout`` ones (colour-shape pairs never seen)."""
        from dalle.data.shapes import make_sample

        train = [make_sample(seed, "train", i).caption for i in range(n - n // 4)]
        return train + [make_sample(seed, "holdout", i).caption for i in range(n // 4)]

    def positives(self, batch: BatchDict) -> torch.Tensor | None:
        from dalle.data.shapes_captions import positives

        return positives(batch["caption"], batch["objects"])

    def describe(self) -> str:
        return f"shapes ({self.num} samples, seed {self.seed})"


class FolderData(ImageTextData):
    """A folder of images with same-stem ``.txt`` captions (:mod:`dalle.data.image_folder`)."""

    name = "folder"

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = Path(root)

    def _dataset(self, image_size: int, seed: int, endless: bool) -> torch.utils.data.Dataset:
        from dalle.data.image_folder import ImageFolderDataset

        return ImageFolderDataset(self.root, image_size, seed=seed)

    def captions(self) -> list[str]:
        from dalle.tokenizer import read_captions

        return read_captions(self.root)

    def describe(self) -> str:
        return str(self.root)


class ShardData(ImageTextData):
    """WebDataset tar shards, img2dataset's layout (:mod:`dalle.data.shards`)."""

    name = "shards"

    def __init__(self, spec: str):
        super().__init__()
        self.spec = spec

    def _dataset(self, image_size: int, seed: int, endless: bool) -> torch.utils.data.Dataset:
        from dalle.data.shards import ShardDataset

        return ShardDataset(self.spec, image_size, seed, epochs=None if endless else 1)

    def captions(self) -> list[str]:
        from dalle.data.shards import shard_captions

        return shard_captions(self.spec)

    def describe(self) -> str:
        return self.spec


def open_data(spec: str | Path, num: int = 20_000, seed: int = 0) -> ImageTextData:
    """``shapes`` (``num`` samples of the built-in set with ``seed``), a shard spec
    (``data/{000..009}.tar``) or a folder of image + ``.txt`` pairs."""
    from dalle.data.shards import is_shards

    spec = str(spec)
    if spec == "shapes":
        return ShapesData(num, seed)
    if is_shards(spec):
        return ShardData(spec)
    return FolderData(spec)
