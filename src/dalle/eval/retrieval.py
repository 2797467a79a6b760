"""Retrieval accuracy of a CLIP model over a pool of images and their captions.

Text -> image: each caption picks the most similar image of the pool; image -> text: each image
picks the most similar caption. A pick is right when the caption describes the image, by the
dataset's ``positives`` rule (for a folder: the same caption). :func:`shapes_retrieval` uses
the held-out captioned shapes: half unseen ``train``-split scenes (seen colour-shape pairs),
half ``holdout`` scenes, reported separately (captions leave attributes out, so several
images can be right).
"""

from __future__ import annotations

import torch

from dalle.data.shapes import EVAL_SEED, eval_samples, stack_samples
from dalle.data.shapes_captions import positives as shapes_positives
from dalle.models.clip import CLIP, caption_positives
from dalle.tokenizer import Tokenizer


@torch.no_grad()
def retrieval(
    clip: CLIP,
    tokenizer: Tokenizer,
    images: torch.Tensor,
    captions: list[str],
    positives: torch.Tensor | None = None,
    groups: dict[str, slice] | None = None,
) -> dict:
    """``{"text_to_image": {group: acc}, "image_to_text": {group: acc}, "n"}`` top-1 accuracy
    over ``images`` (N, C, H, W) and their ``captions``; ``positives`` (N, N) bool says which
    caption describes which image (default: identical normalised captions); ``groups`` names
    slices of the queries to report separately (default: one group, ``all``)."""
    n = len(captions)
    if n < 2 or len(images) != n:
        raise ValueError(f"need at least 2 images with one caption each, got {len(images)}, {n}")
    if positives is None:
        positives = caption_positives(captions, tokenizer)
    text, _ = tokenizer.encode_batch(captions, clip.cfg.text_len)
    sim = clip.similarity(text.to(clip.device), images.to(clip.device)).cpu()  # (text, image)
    t2i = positives.gather(1, sim.argmax(1, keepdim=True)).squeeze(1)  # caption q's pick
    i2t = positives.T.gather(1, sim.T.argmax(1, keepdim=True)).squeeze(1)  # image q's pick
    groups = groups or {"all": slice(0, n)}

    def split(hits: torch.Tensor) -> dict:
        return {
            name: round(float(hits[part].float().mean()), 4) if len(hits[part]) else None
            for name, part in groups.items()
        }

    return {"text_to_image": split(t2i), "image_to_text": split(i2t), "n": n}


def shapes_retrieval(clip: CLIP, tokenizer: Tokenizer, n: int = 256, seed: int = EVAL_SEED) -> dict:
    """:func:`retrieval` over ``n`` held-out shapes, ``seen`` and ``held_out`` separately."""
    if n < 2:
        raise ValueError(f"need at least 2 images to retrieve among, got {n}")
    samples = eval_samples(n, seed)
    images, captions = stack_samples(samples)
    positives = shapes_positives(captions, [s.objects for s in samples])  # (text, image)
    half = n - n // 2
    groups = {"seen": slice(0, half), "held_out": slice(half, n)}
    return retrieval(clip, tokenizer, images, captions, positives, groups)
