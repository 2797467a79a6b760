"""Choosing the sampling settings a model ships with (its ``generation.json``).

Generate for a few captions of the model's own training data under each candidate
:class:`~dalle.sampler.Sampler`, all with one seed, and keep the best: scored by the
dataset's prompt-fidelity judge where it has one (:func:`dalle.eval.fidelity_judge`), else by
CLIP's mean similarity of each image to its caption. With neither, nothing can tell the
candidates apart and the model's defaults stay. Draw the captions apart from every benchmark's
prompts, so that no benchmark measures settings tuned on its own prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image

from dalle.config import to_dict
from dalle.images import image_to_tensor
from dalle.pipeline import DallePipeline, Generation
from dalle.sampler import Sampler

# (caption, image) pairs -> a report whose "overall" is the fraction of images that show their
# caption: dalle.eval.fidelity_judge's kind (train/ and eval/ never import each other)
Judge = Callable[[Iterable[tuple[str, Image.Image]]], dict]


def choose_sampling(
    pipe: DallePipeline,
    captions: Sequence[str],
    candidates: Sequence[Sampler],
    judge: Judge | None = None,
    num_images: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    margin: float = 0.0,
) -> tuple[Sampler, list[dict]]:
    """The best of ``candidates`` for ``pipe`` on ``captions``, and the table: one row per
    candidate with its fields, ``metric`` (``"judge"``: the fraction of images the judge
    passes; ``"clip"``: the mean CLIP cosine similarity; ``None``: not scored), ``score`` and
    ``seconds``. Each candidate draws ``num_images`` images per caption with ``seed``. The
    earliest candidate within ``margin`` of the best score wins (0: the best, ties to the
    earlier one), so a list in order of preference keeps its first unless another beats it by
    more than the noise of a small tuning set. Without a judge and without CLIP, returns
    ``pipe.sampler`` unscored (nothing is generated). Leaves ``pipe.sampler`` unchanged."""
    captions, candidates = list(captions), list(candidates)
    if not captions:
        raise ValueError("expected at least one caption to choose sampling settings on")
    if not candidates:
        raise ValueError("expected at least one candidate Sampler")
    for c in candidates:
        if not isinstance(c, Sampler):
            raise ValueError(f"expected Sampler candidates, got {type(c).__name__}")
    if not (isinstance(margin, (int, float)) and 0 <= margin < float("inf")):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    metric = "judge" if judge is not None else "clip" if pipe.clip is not None else None
    if metric is None:
        rows = [{**to_dict(c), "metric": None, "score": None, "seconds": 0.0} for c in candidates]
        return pipe.sampler, rows
    rows = []
    for c in candidates:
        start = time.perf_counter()
        out = pipe(captions, num_images, seed, c, batch_size=batch_size)
        score = _judged(out, judge) if judge is not None else _clip_score(pipe, out)
        seconds = round(time.perf_counter() - start, 2)
        rows.append({**to_dict(c), "metric": metric, "score": score, "seconds": seconds})
    top = max(row["score"] for row in rows)
    best = next(i for i, row in enumerate(rows) if row["score"] >= top - margin)
    return candidates[best], rows


def _judged(out: Generation, judge: Judge) -> float:
    """The judge's ``overall`` fraction of images that show their caption."""
    report = judge(zip(out.prompts, out.images, strict=True))
    score = report.get("overall")
    if score is None:
        raise ValueError("the fidelity judge scored none of the images")
    return float(score)


def _clip_score(pipe: DallePipeline, out: Generation) -> float:
    """Mean CLIP cosine similarity of each image to its caption."""
    images = torch.stack([image_to_tensor(im) for im in out.images])  # (N, 3, H, W)
    return float(pipe.score(out.prompts, images).mean())
