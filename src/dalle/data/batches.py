"""Endless batch iterators over map-style datasets (shuffled each epoch) and streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


def endless_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    collate: Callable[[list[Any]], Any],
    seed: int = 0,
) -> Iterator[Any]:
    """Yield batches forever; a map-style dataset is reshuffled every epoch with ``seed + epoch``."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        stream = iter(dataset)
        while True:
            yield collate([next(stream) for _ in range(batch_size)])
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the dataset is empty")
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield collate([dataset[i] for i in order[start : start + batch_size]])
        epoch += 1
