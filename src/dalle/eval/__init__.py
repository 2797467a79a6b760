"""Metrics. Generic ones (reconstruction PSNR and codebook usage, CLIP retrieval) work on any
dataset; a dataset with a caption grammar offers a prompt-fidelity judge that reads pixels
(:func:`fidelity_judge`; the built-in shapes: :mod:`dalle.eval.shapes_fidelity`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dalle.data.sources import ImageTextData

# (caption, image) pairs -> fidelity report, with ``overall``: the fraction shown correctly
Judge = Callable[[Iterable[tuple[str, Any]]], dict]


def _shapes_judge() -> Judge:
    from dalle.eval.shapes_fidelity import fidelity

    return fidelity


# A dataset's ``caption_grammar`` -> its prompt-fidelity judge (imported when first asked for).
JUDGES: dict[str, Callable[[], Judge]] = {"shapes": _shapes_judge}


def fidelity_judge(data: ImageTextData) -> Judge | None:
    """The prompt-fidelity metric of ``data``'s captions, or ``None`` when it has none."""
    grammar = data.caption_grammar
    return None if grammar is None else JUDGES[grammar]()
