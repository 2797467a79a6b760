"""Training within a time budget: how many steps of a stage's recipe fit in a number of seconds
on this machine, timed through the trainer's own step (the recipe's precision, accumulation
and AdamW; the transformer's compiled step when it compiles) on throwaway copies of the models.
The demo and the benchmarks size their runs this way: :func:`steps_for_budget` for any
objective, and one function per stage over its recipe."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dalle.config import CLIP_PRESETS, TRANSFORMER_PRESETS, CLIPConfig, TransformerConfig, VAEConfig
from dalle.data.sources import ImageTextData
from dalle.data.tokens import TokenSet, token_batches
from dalle.models.clip import CLIP
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.tokenizer import Tokenizer
from dalle.train.clip_trainer import CLIPObjective
from dalle.train.loop import Objective, Trainer
from dalle.train.train_config import (
    CLIPTrainConfig,
    OptimConfig,
    RunConfig,
    TransformerTrainConfig,
    VAETrainConfig,
)
from dalle.train.transformer_trainer import DalleObjective, sized_config
from dalle.train.vae_trainer import PatchCodeObjective, VAEObjective


def steps_for_budget(
    model: torch.nn.Module,
    objective: Objective,
    batches: Iterator[Any],
    seconds: float,
    optim: OptimConfig | None = None,
    probe: int = 20,
    at_least: int = 10,
    warmup: int = 5,
) -> int:
    """How many steps of ``objective`` fit in ``seconds``, timed through the trainer's own
    step (``optim``'s precision, accumulation, clipping and AdamW; default: fp32, one batch)
    on a throwaway copy of ``model``, so the model itself is untouched.

    ``probe`` steps are timed after ``warmup`` untimed ones (allocations, kernel selection and,
    for a compiled objective, the compile). The probe's own seconds, a compile's included, are
    spent from the budget; the real run compiles the same graph again from Inductor's cache
    (about 2 s against 20 for the demo's transformer), which the budget does not charge.
    """
    t_start = time.perf_counter()
    cfg = replace(optim or OptimConfig(steps=1, lr=1e-3), steps=warmup + probe, ema=None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(copy.deepcopy(model).train(), objective, batches, cfg, Path(tmp))
        for i in range(warmup):
            trainer.step(i, "probe")
        t0 = time.perf_counter()
        for i in range(warmup, warmup + probe):
            trainer.step(i, "probe")
        t1 = time.perf_counter()
    per_step = (t1 - t0) / probe
    left = seconds - (time.perf_counter() - t_start)
    return max(at_least, int(left / per_step))


def bf16_pays_off(device: torch.device | str = "cpu", repeats: int = 3) -> bool:
    """Whether bf16 matmuls beat fp32 ones on ``device`` by a fifth or more: timed on a
    (2048, 128) x (128, 512) product (the tiny transformer's MLP), medians of ``repeats``
    after one warm-up. CPUs without native bf16 run it through a reference kernel, some 100x
    slower than fp32 (AMD EPYC without AVX512-BF16: 191 ms against 1.8 ms), where bf16
    autocast would make training 16x slower, not faster."""
    device = torch.device(device)

    def median_s(dtype: torch.dtype) -> float:
        a = torch.randn(2048, 128, device=device, dtype=dtype)
        b = torch.randn(128, 512, device=device, dtype=dtype)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            (a @ b).sum().item()  # .item(): wait for an asynchronous device
            times.append(time.perf_counter() - t0)
        return sorted(times[1:])[len(times[1:]) // 2]

    return median_s(torch.bfloat16) < 0.8 * median_s(torch.float32)


def vae_steps_within(
    seconds: float, data: ImageTextData, recipe: VAETrainConfig, model: VAEConfig
) -> int:
    """Steps of the objective ``recipe`` starts with (a random stand-in for the warm start's
    k-means codebook), data included, that fit in ``seconds``."""
    k, patch = model.vocab_size, model.channels * model.downsample**2
    if recipe.warm_start:
        probe = PatchCodeObjective(recipe, torch.rand(k, patch))
    else:
        probe = VAEObjective(recipe)
    batches = data.batches(model.image_size, recipe.batch_size, recipe.seed)
    images = (b["image"] for b in batches)
    return steps_for_budget(DiscreteVAE(model), probe, images, seconds, recipe.optim())


def transformer_steps_within(
    seconds: float,
    tokens: TokenSet,
    vae: DiscreteVAE,
    tokenizer: Tokenizer,
    recipe: TransformerTrainConfig,
    model: TransformerConfig | None = None,
    compile: bool = False,
) -> int:
    """Steps of the transformer objective that fit in ``seconds``; with ``compile``, of its
    compiled step (the probe's compile spent from ``seconds``)."""
    cfg = sized_config(model or TRANSFORMER_PRESETS["tiny"], tokenizer, vae)
    text, _ = tokenizer.encode_batch(tokens.captions[:256], cfg.text_len)
    batches = token_batches(text, tokens.codes[:256], recipe.batch_size)
    objective = DalleObjective(recipe, compile=compile)
    return steps_for_budget(DALLE(cfg), objective, batches, seconds, recipe.optim())


def timed_transformer(
    seconds: float,
    tokens: TokenSet,
    vae: DiscreteVAE,
    tokenizer: Tokenizer,
    recipe: TransformerTrainConfig,
    run: RunConfig,
    model: TransformerConfig | None = None,
    compile: bool = False,
) -> tuple[TransformerTrainConfig, RunConfig]:
    """A transformer run of ``seconds``: ``recipe`` with the probe's step count
    (:func:`transformer_steps_within`) as its first plan, and ``run`` on a time limit of what
    the probe leaves (the loop re-plans the steps to end on time; no limit when the probe left
    nothing, so the run takes the probe's minimum of steps)."""
    start = time.perf_counter()
    steps = transformer_steps_within(seconds, tokens, vae, tokenizer, recipe, model, compile)
    left = seconds - (time.perf_counter() - start)
    return replace(recipe, steps=steps), replace(run, seconds=left if left > 0 else None)


def clip_steps_within(
    seconds: float,
    data: ImageTextData,
    tokenizer: Tokenizer,
    recipe: CLIPTrainConfig,
    model: CLIPConfig | None = None,
) -> int:
    """Steps of the CLIP objective (data and the dataset's positives included) that fit in
    ``seconds``."""
    cfg = model or CLIP_PRESETS["tiny"]
    batches = data.batches(cfg.image_size, recipe.batch_size, recipe.seed)
    objective = CLIPObjective(tokenizer, data.positives)
    return steps_for_budget(CLIP(cfg), objective, batches, seconds, recipe.optim())
