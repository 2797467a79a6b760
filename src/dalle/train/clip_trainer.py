"""The CLIP objective: symmetric InfoNCE (Radford et al. 2021) with every true pair a positive.

Plain InfoNCE treats caption i and image j != i as a mismatch. On data whose captions leave
attributes out that is often false: "a red circle" describes every image of one red circle.
Punishing those pairs teaches the model to split hairs the caption never stated. So the loss
takes a ``positives`` matrix (caption i describes image j) and spreads each row's and each
column's target mass evenly over its positives. The dataset supplies the matrix
(:meth:`dalle.data.sources.ImageTextData.positives`): for the shapes it is exact (the caption
grammar checked against the scene's object list); for a folder of captions it is "same
caption", which reduces to the usual identity for distinct captions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from dalle.config import CLIP_PRESETS, CLIPConfig, to_dict
from dalle.data.sources import ImageTextData
from dalle.models.clip import CLIP, caption_positives
from dalle.tokenizer import Tokenizer
from dalle.train.loop import Callback, train
from dalle.train.run import Trained, start_run
from dalle.train.train_config import CheckpointConfig, CLIPTrainConfig, RunConfig


def clip_loss(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    scale: torch.Tensor | float,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of unit vectors ``text_emb`` (B, D), ``image_emb`` (B, D).

    ``logits = scale * text_emb @ image_emb.T``. Text i's target over images is uniform on
    ``positives[i]``; image j's target over texts is uniform on ``positives[:, j]``; the loss
    is the mean of the two cross entropies. ``positives`` (B, B) bool defaults to the identity
    and must hold its diagonal (each caption describes its own image).
    """
    b = text_emb.shape[0]
    if text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected text and image embeddings of one shape (B, D), got "
            f"{tuple(text_emb.shape)} and {tuple(image_emb.shape)}"
        )
    if positives is None:
        positives = torch.eye(b, dtype=torch.bool, device=text_emb.device)
    if positives.shape != (b, b) or not bool(positives.diagonal().all()):
        raise ValueError(f"positives must be ({b}, {b}) with a true diagonal")
    logits = scale * text_emb @ image_emb.T  # (texts, images)
    target = positives.float()
    text_to_image = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1)
    image_to_text = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0)
    return (text_to_image.mean() + image_to_text.mean()) / 2


class CLIPObjective:
    """``(model, batch, step) -> (loss, metrics)`` for :func:`dalle.train.loop.train`; a batch
    is a dict with ``image`` (B, C, H, W) and ``caption``. ``positives(batch)`` is the
    dataset's rule for which caption describes which image (``None``: the same caption)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        positives: Callable[[dict], torch.Tensor | None] | None = None,
    ):
        self.tokenizer = tokenizer
        self.positives = positives

    def __call__(
        self, model: CLIP, batch: dict, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        captions = batch["caption"]
        positives = self.positives(batch) if self.positives is not None else None
        if positives is None:
            positives = caption_positives(captions, self.tokenizer)
        positives = positives.to(batch["image"].device)
        text, _ = self.tokenizer.encode_batch(captions, model.cfg.text_len)
        t = model.encode_text(text.to(model.device))
        i = model.encode_image(batch["image"])
        scale = model.temperature()
        loss = clip_loss(t, i, scale, positives)
        with torch.no_grad():  # top-1 within the batch, counting any true positive as a hit
            hit = positives.gather(1, (t @ i.T).argmax(1, keepdim=True)).float().mean()
        return loss, {"batch_top1": float(hit), "scale": float(scale.detach())}


def fit_clip(
    model: CLIP,
    tokenizer: Tokenizer,
    cfg: CLIPTrainConfig,
    batches: Iterator[dict],
    run_dir: Path,
    callbacks: list[Callback] = (),  # type: ignore[assignment]
    progress: bool = True,
    checkpoint: CheckpointConfig | None = None,
    resume: bool = False,
    positives: Callable[[dict], torch.Tensor | None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place; returns the last logged metrics. ``checkpoint`` and
    ``resume`` as in :func:`dalle.train.loop.train`."""
    if tokenizer.vocab_size != model.cfg.text_vocab:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but CLIP expects "
            f"text_vocab={model.cfg.text_vocab}"
        )
    torch.manual_seed(cfg.seed)
    objective = CLIPObjective(tokenizer, positives)
    return train(model, objective, batches, cfg.optim(), run_dir, list(callbacks), "clip",
                 progress, checkpoint=checkpoint, resume=resume)  # fmt: skip


def train_clip(
    data: ImageTextData,
    tokenizer: Tokenizer,
    out: str | Path,
    cfg: CLIPTrainConfig = CLIPTrainConfig(),
    model: CLIPConfig | None = None,
    run: RunConfig = RunConfig(),
) -> Trained[CLIP]:
    """Stage 3: CLIP (default: the ``tiny`` preset, sized to ``tokenizer``) trained on
    ``data``, with the dataset's positives rule. Writes ``out/model/`` (tokenizer.json +
    clip/), ``out/metrics.jsonl`` and ``out/train_config.json``. Resume is exact for
    generated data; a folder's choice among several captions per image is not replayed."""
    from dalle.model_folder import CLIP_DIR, TOKENIZER_FILE

    model = replace(model or CLIP_PRESETS["tiny"], text_vocab=tokenizer.vocab_size)
    settings = {"model": to_dict(model), "train": to_dict(cfg), "data": data.describe()}
    out = start_run(Path(out), settings, run.resume, run.force, {"train": CLIPTrainConfig})
    torch.manual_seed(cfg.seed)
    clip = CLIP(model).to(run.device)

    def save(step: int) -> None:
        tokenizer.save(out / "model" / TOKENIZER_FILE)
        clip.save(out / "model" / CLIP_DIR)

    batches = data.batches(model.image_size, cfg.batch_size, cfg.seed)
    callbacks = [Callback(run.save_every, save)]
    metrics = fit_clip(clip, tokenizer, cfg, batches, out, callbacks, run.progress,
                       run.checkpoint, run.resume, data.positives)  # fmt: skip
    return Trained(clip, out, metrics)
