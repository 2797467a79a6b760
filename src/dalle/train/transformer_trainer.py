"""The DALL-E transformer objective (Ramesh et al. 2021, Sec. 2.2): cross entropy of the next
token, averaged separately over text and image targets and weighted 1/8 and 7/8.

Text targets are caption tokens 1 .. text_len - 1 (the first token has no predecessor), pads
included as their per-position ids; image targets are all given image codes. Caption dropout
(whole captions replaced by pads) trains the unconditional model that classifier-free guidance
in ``dalle.sampler`` mixes with the conditional one. Colour dropout (an option) leaves the
colour factor of single codes of a product codebook out of the model's input while every code
stays a target, so that more of the colour is drawn from the caption rather than copied from
the codes before it.

:func:`fit_transformer` trains a model in place on token batches; :func:`train_transformer` is
the stage: a token set and a dVAE in, a pipeline (tokenizer, dVAE, transformer) and its run out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle.compiling import Compiled
from dalle.config import TRANSFORMER_PRESETS, TransformerConfig, to_dict
from dalle.data.sources import example_captions
from dalle.data.tokens import TokenSet, token_batches
from dalle.images import contact_sheet, png_bytes
from dalle.io import write_bytes_atomic
from dalle.models.codebook import split_codes
from dalle.models.dalle_transformer import DALLE
from dalle.models.saving import fingerprint
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.tokenizer import Tokenizer
from dalle.train import distributed
from dalle.train.loop import Callback, SeededObjective, train
from dalle.train.run import Trained, start_run
from dalle.train.train_config import CheckpointConfig, RunConfig, TransformerTrainConfig


def dalle_loss(
    model: DALLE,
    text: torch.Tensor,
    image: torch.Tensor,
    text_weight: float = 1 / 8,
    image_weight: float = 7 / 8,
    terms: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    drop_colours: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``text`` (B, text_len), ``image`` (B, n >= 1) codes -> ``(loss, {"text_loss", "image_loss"})``.

    ``loss = text_weight * text_loss + image_weight * image_loss``; the metrics are the two
    means in nats, as floats. The last image code is only a target, so the model sees
    ``image[:, :-1]``. ``drop_colours``, boolean ``(B, n - 1)``, leaves the colour factors of
    input codes out of the model's input (:meth:`DALLE.hidden`) while every code stays a
    target. The inputs are checked here, then ``terms`` (default :func:`loss_terms`; a compiled
    one in :class:`DalleObjective`) computes the tensors.
    """
    check_loss_inputs(model, text, image, text_weight, image_weight)
    mask, shape = drop_colours, image[:, :-1].shape
    if mask is not None and (mask.dtype != torch.bool or mask.shape != shape):
        raise ValueError(
            f"expected a boolean code mask of shape {tuple(shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if mask is not None and not model.cfg.image_palette:
        raise ValueError("colour dropout needs a product codebook (a dVAE with a palette)")
    terms = loss_terms if terms is None else terms
    loss, text_loss, image_loss = terms(model, text, image, text_weight, image_weight, drop_colours)
    return loss, {"text_loss": text_loss.item(), "image_loss": image_loss.item()}


def check_loss_inputs(
    model: DALLE, text: torch.Tensor, image: torch.Tensor, text_weight: float, image_weight: float
) -> None:
    """The ``ValueError`` checks of :func:`dalle_loss`."""
    if image.ndim != 2 or image.shape[1] < 1:
        raise ValueError(f"expected image codes of shape (B, n >= 1), got {tuple(image.shape)}")
    if text_weight < 0 or image_weight < 0:
        raise ValueError(f"expected weights >= 0, got {text_weight}, {image_weight}")
    model.check_text(text)
    model.check_image(image[:, :-1], text.shape[0], model.cfg.image_len)


def loss_terms(
    model: DALLE,
    text: torch.Tensor,
    image: torch.Tensor,
    text_weight: float,
    image_weight: float,
    drop_colours: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dalle_loss` as tensors ``(loss, text_loss, image_loss)``, unchecked: what the
    ``compile`` option of :class:`DalleObjective` compiles."""
    cfg = model.cfg
    t = cfg.text_len
    # Each position through the head of the modality it predicts, never the full vocabulary.
    h = model.hidden(text, image[:, :-1], drop_colours)  # (B, t + n - 1, C)
    text_logits = model.text_logits(h[:, : t - 1]).float()  # (B, text_len - 1, text_vocab_total)
    targets = model.text_tokens(text)[:, 1:]
    text_loss = F.cross_entropy(text_logits.flatten(0, 1), targets.flatten())
    factors = model.image_factor_logits(h[:, t - 1 :]).float().flatten(0, 1)  # (B * n, F)
    codes = image.long().flatten()
    if cfg.image_palette:  # a product of two softmaxes: its NLL is the sum of theirs
        p = cfg.image_vocab // cfg.image_palette
        pattern, colour = split_codes(codes, cfg.image_palette)
        image_loss = F.cross_entropy(factors[:, :p], pattern) + F.cross_entropy(
            factors[:, p:], colour
        )
    else:
        image_loss = F.cross_entropy(factors, codes)
    return text_weight * text_loss + image_weight * image_loss, text_loss, image_loss


def caption_dropout(
    text: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A copy of ``text`` (B, text_len) with each whole row, with probability ``p``, set to pads (0)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout p must be in [0, 1], got {p}")
    if text.ndim != 2:
        raise ValueError(f"expected text of shape (B, text_len), got {tuple(text.shape)}")
    drop = torch.rand(text.shape[0], generator=generator).to(text.device) < p  # (B,)
    return torch.where(drop[:, None], torch.zeros_like(text), text)


class DalleObjective(SeededObjective):
    """``(model, (text, codes), step) -> (loss, metrics)`` for :func:`dalle.train.loop.train`;
    its generator draws caption and colour dropout, in that order, each only when its option
    is on. ``compile`` runs :func:`loss_terms` (forward and backward) through
    ``torch.compile``, compiled at the first step (without a working compiler: one warning,
    then eagerly)."""

    def __init__(
        self,
        cfg: TransformerTrainConfig,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ):
        super().__init__(generator)
        self.cfg = cfg
        self.terms = Compiled(loss_terms, "the training step") if compile else loss_terms

    def __call__(
        self, model: DALLE, batch: tuple[torch.Tensor, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        text, codes = batch
        if self.cfg.caption_dropout:
            text = caption_dropout(text, self.cfg.caption_dropout, self.generator)
        weights = self.cfg.text_weight, self.cfg.image_weight
        drop_colours = self._code_mask(codes, self.cfg.colour_dropout)
        return dalle_loss(model, text, codes, *weights, terms=self.terms, drop_colours=drop_colours)

    def _code_mask(self, codes: torch.Tensor, p: float) -> torch.Tensor | None:
        """Which input codes ``codes[:, :-1]`` to leave out, each with probability ``p``; None at 0."""
        if not p:
            return None
        shape = (codes.shape[0], codes.shape[1] - 1)
        return (torch.rand(shape, generator=self.generator) < p).to(codes.device)


def fit_transformer(
    model: DALLE,
    cfg: TransformerTrainConfig,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    run_dir: Path,
    callbacks: list[Callback] = (),  # type: ignore[assignment]
    progress: bool = True,
    checkpoint: CheckpointConfig | None = None,
    resume: bool = False,
    compile: bool = False,
    activation_checkpointing: bool = False,
    shard: bool = False,
    seconds: float | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``(text, codes)`` batches; returns the last metrics.
    ``checkpoint``, ``resume`` and ``seconds`` as in :func:`dalle.train.loop.train`; ``compile`` as in
    :class:`DalleObjective`; ``activation_checkpointing`` recomputes each block in the
    backward pass (:attr:`dalle.models.transformer.Transformer.checkpointing`); ``shard``
    trains with FSDP2 under ``torchrun`` (:mod:`dalle.train.sharding`)."""
    torch.manual_seed(cfg.seed)
    model.transformer.checkpointing = activation_checkpointing
    objective = DalleObjective(cfg, torch.Generator().manual_seed(cfg.seed), compile)
    return train(model, objective, batches, cfg.optim(), run_dir, list(callbacks), "train",
                 progress, checkpoint=checkpoint, resume=resume, shard=shard,
                 seconds=seconds)  # fmt: skip


def sized_config(model: TransformerConfig, tokenizer: Tokenizer, vae: DiscreteVAE) -> TransformerConfig:
    """``model`` with the vocabularies and the code grid of ``tokenizer`` and ``vae``."""
    return replace(
        model,
        text_vocab=tokenizer.vocab_size,
        image_vocab=vae.cfg.vocab_size,
        image_grid=vae.cfg.grid_size,
        image_palette=vae.cfg.palette,
    )


def check_tokens(tokens: TokenSet, vae: DiscreteVAE) -> None:
    """ValueError unless the token file's codes come from ``vae`` (fingerprint, grid, codebook)."""
    if tokens.vae_id and tokens.vae_id != fingerprint(vae):
        raise ValueError(
            f"the token file was encoded by another dVAE (id {tokens.vae_id}, this one is "
            f"{fingerprint(vae)}): encode again with `dalle encode --vae` of this dVAE"
        )
    if tokens.grid != vae.cfg.grid_size or tokens.vocab_size != vae.cfg.vocab_size:
        raise ValueError(
            f"the token file holds {tokens.grid}x{tokens.grid} codes of {tokens.vocab_size} but "
            f"the dVAE makes {vae.cfg.grid_size}x{vae.cfg.grid_size} of {vae.cfg.vocab_size}"
        )


def check_recipe(cfg: TransformerTrainConfig, vae: DiscreteVAE) -> None:
    """ValueError if ``cfg`` asks for what ``vae``'s codes lack (colour dropout, a palette)."""
    if cfg.colour_dropout and not vae.cfg.palette:
        raise ValueError("--colour-dropout needs a dVAE with a product codebook (a palette)")


def train_transformer(
    tokens: TokenSet,
    vae: DiscreteVAE,
    out: str | Path,
    cfg: TransformerTrainConfig = TransformerTrainConfig(),
    model: TransformerConfig | None = None,
    tokenizer: Tokenizer | None = None,
    run: RunConfig = RunConfig(),
    snapshots: Sequence[int] = (),
) -> Trained[DallePipeline]:
    """Stage 2: the transformer (default: the ``tiny`` preset, sized to ``tokenizer`` and
    ``vae``) trained on ``tokens``, the dVAE codes and captions of :func:`dalle.train.encode`.
    Without ``tokenizer`` one is trained on the token set's captions. Writes ``out/model/``
    (a pipeline folder for :class:`dalle.DallePipeline` and ``dalle generate``),
    ``out/metrics.jsonl``, ``out/train_config.json`` and sample grids ``out/samples_*.png``.
    At each step count in ``snapshots`` a copy of the model folder is kept as
    ``out/snapshots/step_NNNNNN/`` (for learning curves: one run, the model at several steps)."""
    check_tokens(tokens, vae)  # before anything is written
    check_recipe(cfg, vae)
    keep = frozenset(snapshots)
    if any(not 1 <= s <= cfg.steps for s in keep):
        raise ValueError(f"snapshots must be steps from 1 to {cfg.steps}, got {sorted(keep)}")
    if keep and run.seconds is not None:
        raise ValueError("snapshots need a fixed step count: a run with a time limit re-plans it")
    if cfg.batch_size > len(tokens):
        raise ValueError(f"--batch-size {cfg.batch_size} is more than the {len(tokens)} token rows")
    if tokenizer is None:
        from dalle.train.tokenization import train_tokenizer

        tokenizer = train_tokenizer(tokens.captions)
    model = sized_config(model or TRANSFORMER_PRESETS["tiny"], tokenizer, vae)
    settings = {"model": to_dict(model), "train": to_dict(cfg), "rows": len(tokens)}
    configs = {"model": TransformerConfig, "train": TransformerTrainConfig}
    out = start_run(Path(out), settings, run.resume, run.force, configs)
    text, _ = tokenizer.encode_batch(tokens.captions, model.text_len)
    torch.manual_seed(cfg.seed)
    if run.shard and not distributed.is_main():  # rank 0's weights are broadcast to the rest
        with torch.device("meta"):
            transformer = DALLE(model)
    else:
        transformer = DALLE(model).to(run.device)
    examples = example_captions(tokens.captions)
    pipe = DallePipeline(tokenizer, vae.to(run.device), transformer, examples=examples)
    prompts = list(dict.fromkeys(tokens.captions[:64]))[:8]

    def save(step: int) -> None:
        pipe.save_pretrained(out / "model")
        if run.shard:  # the gathered weights wait on rank 0's CPU: no sample grid
            return
        images = pipe(prompts, num_images=2, seed=0).images
        write_bytes_atomic(out / f"samples_{step:06d}.png", png_bytes(contact_sheet(images, 4)))

    batches = token_batches(text, tokens.codes, cfg.batch_size, cfg.seed)

    def snapshot(step: int) -> None:
        pipe.save_pretrained(out / "snapshots" / f"step_{step:06d}")

    callbacks = [Callback(run.save_every, save)]
    if keep:
        callbacks.append(Callback(1, snapshot, at=keep))
    metrics = fit_transformer(pipe.transformer, cfg, batches, out, callbacks, run.progress,
                              run.checkpoint, run.resume, run.compile,
                              run.activation_checkpointing, run.shard, run.seconds)  # fmt: skip
    return Trained(pipe, out, metrics)
