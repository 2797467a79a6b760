"""Retrieval accuracy of a CLIP model on held-out captioned shapes.

One pool of images with their captions: half unseen ``train``-split scenes (seen colour-shape
pairs), half ``holdout`` scenes. Text -> image: each caption picks the most similar image of
the pool; image -> text: each image picks the most similar caption. A pick is right when the
caption describes the image (SHAPES.md's rule: captions leave attributes out, so several
images can be right). Accuracy is reported for the queries of each half separately.
"""

from __future__ import annotations

import torch

from dalle.data.shapes import make_sample
from dalle.images import image_to_tensor
from dalle.models.clip import CLIP
from dalle.tokenizer import Tokenizer
from dalle.train.clip import shapes_positives

EVAL_SEED = 1_000_003  # the seed of the dVAE's held-out set too: no training run draws it


@torch.no_grad()
def shapes_retrieval(clip: CLIP, tokenizer: Tokenizer, n: int = 256, seed: int = EVAL_SEED) -> dict:
    """``{"text_to_image": {"seen", "held_out"}, "image_to_text": {...}, "n"}`` top-1 accuracy."""
    if n < 2:
        raise ValueError(f"need at least 2 images to retrieve among, got {n}")
    half = n - n // 2
    samples = [make_sample(seed, "train", i) for i in range(half)]
    samples += [make_sample(seed, "holdout", i) for i in range(n // 2)]
    captions = [s.caption for s in samples]
    positives = shapes_positives(captions, [s.objects for s in samples])  # (text, image)
    images = torch.stack([image_to_tensor(s.image) for s in samples]).to(clip.device)
    text, _ = tokenizer.encode_batch(captions, clip.cfg.text_len)
    sim = clip.similarity(text.to(clip.device), images).cpu()  # (text, image)
    t2i = positives.gather(1, sim.argmax(1, keepdim=True)).squeeze(1)  # caption q's pick
    i2t = positives.T.gather(1, sim.T.argmax(1, keepdim=True)).squeeze(1)  # image q's pick

    def split(hits: torch.Tensor) -> dict:
        return {
            "seen": round(float(hits[:half].float().mean()), 4),
            "held_out": round(float(hits[half:].float().mean()), 4) if n // 2 else None,
        }

    return {"text_to_image": split(t2i), "image_to_text": split(i2t), "n": n}
