"""Every training config in one place: typed, validated on construction, saved with the run.

- :class:`OptimConfig`: what the generic loop optimises with (AdamW, schedule, clipping,
  accumulation, precision, weight average). Each stage's recipe builds one with ``optim()``.
- :class:`CheckpointConfig`: how often a run saves its full training state.
- :class:`RunConfig`: where and how a run goes (samples, checkpoints, resume, device).
- One recipe per stage: :class:`TokenizerConfig`, :class:`VAETrainConfig`,
  :class:`TransformerTrainConfig`, :class:`CLIPTrainConfig`.

Model architectures are in :mod:`dalle.config`; these are how a model is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from dalle.config import require

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "muon")  # see dalle.train.optimizer
DEFAULT_VOCAB_SIZE = 1024  # caption BPE ids, [PAD] and the 256 byte tokens included


@dataclass(frozen=True)
class OptimConfig:
    """How the loop optimises. ``accumulate`` batches make one step; ``precision`` ``bf16``
    runs the objective under bf16 autocast, ``fp16`` under fp16 autocast with a gradient
    scaler (CUDA only); a step whose loss or gradient is not finite is skipped, and
    ``max_bad_steps`` of them in a row stop the run. With ``ema`` the loop keeps an
    exponential moving average of the weights and puts it into the model after the last
    step (before the final checkpoint and callbacks)."""

    steps: int
    lr: float
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0
    log_every: int = 10
    accumulate: int = 1
    precision: str = "fp32"
    max_bad_steps: int = 5
    ema: float | None = None  # decay of an exponential moving average of the weights
    optimizer: str = "adamw"  # or "muon" for the hidden blocks' matrices (dalle.train.optimizer)

    def __post_init__(self) -> None:
        require(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
        )
        require(
            self.steps >= 1 and self.accumulate >= 1 and self.max_bad_steps >= 1,
            f"steps, accumulate and max_bad_steps must be >= 1, got {self.steps}, "
            f"{self.accumulate}, {self.max_bad_steps}",
        )
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(
            self.ema is None or 0.0 < self.ema < 1.0, f"ema decay must be in (0, 1), got {self.ema}"
        )
        require(
            self.precision in PRECISIONS,
            f"precision must be one of {PRECISIONS}, got {self.precision!r}",
        )


@dataclass(frozen=True)
class CheckpointConfig:
    every: int  # steps between checkpoints
    keep: int = 3  # newest checkpoints kept on disk
    minutes: float | None = None  # also save when this much time has passed since the last

    def __post_init__(self) -> None:
        require(
            self.every >= 1 and self.keep >= 1,
            f"checkpoint every and keep must be >= 1, got {self.every}, {self.keep}",
        )
        require(
            self.minutes is None or self.minutes > 0,
            f"checkpoint minutes must be > 0, got {self.minutes}",
        )

    def due(self, step: int, last_step: int, seconds_since: float) -> bool:
        """Save after ``step``? Every ``every`` steps, or once ``minutes`` have passed."""
        if step % self.every == 0:
            return True
        late = self.minutes is not None and seconds_since >= 60 * self.minutes
        return late and step > last_step


@dataclass(frozen=True)
class RunConfig:
    """How a training run uses its folder. ``save_every`` steps the model folder (and sample
    or reconstruction grids) is written; with ``checkpoint`` the full training state too, so
    that ``resume`` continues exactly. A run folder that is not empty is refused unless
    ``force`` or ``resume``. ``compile``: the transformer stage compiles its training step
    with ``torch.compile`` (a speed option, so a run may resume with or without it);
    ``activation_checkpointing``: its blocks keep only their inputs for the backward pass and
    recompute the rest there (a memory option: the same numbers, resumable either way);
    ``shard``: under ``torchrun`` the transformer is trained with FSDP2 instead of DDP, each
    rank holding a slice of its weights, gradients and optimizer state (sharded checkpoints;
    the model folder still holds the full weights). ``seconds``: the transformer's training
    loop ends that many wall-clock seconds after it starts, its recipe's ``steps`` re-planned
    from its own measured step time (:class:`dalle.train.loop.StepPlan`); such a run does not
    resume."""

    save_every: int = 500
    checkpoint: CheckpointConfig | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True
    device: str = "cpu"
    compile: bool = False
    activation_checkpointing: bool = False
    shard: bool = False
    seconds: float | None = None

    def __post_init__(self) -> None:
        require(self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}")
        require(
            self.seconds is None or self.seconds > 0,
            f"a run's time limit must be > 0 seconds, got {self.seconds}",
        )
        require(
            not (self.seconds is not None and self.resume),
            "a run with a time limit cannot resume: its step count is not fixed",
        )
        require(not (self.shard and self.compile), "--compile does not combine with --shard yet")


class _Recipe(Protocol):
    """The optimisation fields every stage's recipe has."""

    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    grad_clip: float


def _optim(recipe: _Recipe, **extra: Any) -> OptimConfig:
    """The loop's config of a recipe's common fields, plus the stage's ``extra`` ones."""
    return OptimConfig(
        steps=recipe.steps,
        lr=recipe.lr,
        warmup_steps=recipe.warmup_steps,
        min_lr_ratio=recipe.min_lr_ratio,
        weight_decay=recipe.weight_decay,
        grad_clip=recipe.grad_clip,
        **extra,
    )


def _check_recipe(steps: int, batch_size: int, lr: float, min_batch: int = 1) -> None:
    require(
        steps >= 1 and batch_size >= min_batch,
        f"steps must be >= 1 and batch_size >= {min_batch}, got {steps}, {batch_size}",
    )
    require(lr > 0, f"lr must be > 0, got {lr}")


@dataclass(frozen=True)
class TokenizerConfig:
    """The caption BPE: the largest vocabulary (small corpora may stop short of it)."""

    vocab_size: int = DEFAULT_VOCAB_SIZE

    def __post_init__(self) -> None:
        from dalle.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE

        require(
            MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE,
            f"vocab_size must be in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE}, got {self.vocab_size}",
        )


@dataclass(frozen=True)
class VAETrainConfig:
    """Objective and optimisation of the dVAE (paper App. A.2, scaled down to minutes on a CPU).

    Defaults are the ``tiny`` recipe as measured in benchmarks/vae_quality.py. The paper's KL
    weight (6.6) is available with ``kl_weight=6.6``; in runs of a few hundred steps it held the
    encoder near uniform and reconstructions near the mean image, so the default is 0. The
    paper's logit-Laplace loss is ``recon="logit_laplace"``; in 500-step runs it reached 17 dB
    and lost colour (its median-like fit favours the black background), MSE 24 dB.
    """

    steps: int = 2400
    batch_size: int = 8
    lr: float = 4e-3  # 8e-3 was no better within run-to-run noise; 1.2e-2 diverged
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_anneal_steps: int | None = None  # cosine 1 -> 1/16 over these steps (None: all)
    kl_weight: float = 0.0  # beta target, reached by a cosine warm-up (paper: 6.6)
    kl_warmup_steps: int = 500
    recon: str = "mse"  # or "logit_laplace" (the paper's)
    straight_through: bool = False  # hard one-hot forward, soft gradients
    # Weight of KL(batch-average code distribution || uniform): spreads codes over the codebook
    # without making each position's distribution uniform (0 = the paper's objective).
    usage_weight: float = 0.1
    # Data-dependent init of the logit layer (k-means++ on encoder features, see
    # dalle.train.kmeans.init_codebook_logits); 0 keeps the random init. Used without warm start.
    init_spread: float = 15.0
    # Warm start (dalle.train.vae_trainer.PatchCodeObjective): the first ``warm_start`` fraction of the
    # steps teaches the encoder the k-means code of each pixel patch (cross entropy) and the
    # decoder to draw images from those codes; the relaxed ELBO takes over for the rest. The
    # tiny recipe is all warm start: an ELBO phase after it lowered quality (benchmarks in
    # README); 0 is the paper's objective alone.
    warm_start: float = 1.0
    kmeans_images: int = 2048  # images whose patches seed the k-means codebook
    kmeans_iters: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        _check_recipe(self.steps, self.batch_size, self.lr)
        require(0 < self.tau_end <= self.tau_start, "need 0 < tau_end <= tau_start")
        require(self.kl_weight >= 0, f"kl_weight must be >= 0, got {self.kl_weight}")
        require(self.usage_weight >= 0, f"usage_weight must be >= 0, got {self.usage_weight}")
        require(self.init_spread >= 0, f"init_spread must be >= 0, got {self.init_spread}")
        require(0 <= self.warm_start <= 1, f"warm_start must be in [0, 1], got {self.warm_start}")
        require(self.kmeans_images >= 1, f"kmeans_images must be >= 1, got {self.kmeans_images}")
        require(self.kmeans_iters >= 1, f"kmeans_iters must be >= 1, got {self.kmeans_iters}")
        require(
            self.recon in ("logit_laplace", "mse"),
            f"recon must be 'logit_laplace' or 'mse', got {self.recon!r}",
        )

    @property
    def warm_start_steps(self) -> int:
        return round(self.warm_start * self.steps)

    @property
    def one_phase(self) -> bool:
        """All warm start or all ELBO: the recipes that checkpoints and resume support."""
        return self.warm_start_steps in (0, self.steps)

    def optim(self) -> OptimConfig:
        return _optim(self)


@dataclass(frozen=True)
class TransformerTrainConfig:
    """Optimisation of the transformer (paper App. B.2, scaled down to minutes on a CPU)."""

    steps: int = 3000
    # With Muon, batch 16 x 1 500 steps (391 s) drew 78.4 / 81.6 / 65.5 % (seen / held-out /
    # two-object), level with batch 8 x 3 020 steps (407 s): the same sequences
    # (docs/results.md#learning-curves). Batch 8 keeps more steps in a short budget.
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    text_weight: float = 1 / 8
    image_weight: float = 7 / 8
    caption_dropout: float = 0.15  # trains the unconditional model for guidance
    # Colour dropout: each image code of the model's input (never a target) of a product
    # codebook has, with this probability, its colour factor left out of its embedding.
    colour_dropout: float = 0.0
    seed: int = 0
    accumulate: int = 1  # batches per optimisation step
    precision: str = "fp32"  # or bf16 (autocast), fp16 (autocast + gradient scaler, CUDA)
    ema: float | None = None  # decay of a moving average of the weights, which is the result
    # Muon for the blocks' weight matrices, AdamW for the rest; or "adamw" for every parameter.
    # Muon's learning curve reached two-object prompts >= 50 % in 673 s; AdamW's did not in
    # 887 s (docs/results.md#learning-curves).
    optimizer: str = "muon"

    # Fields whose default changed since they were added: a recorded run without the field was
    # started by older code with this value, and resumes with it.
    CHANGED_DEFAULTS: ClassVar[dict[str, Any]] = {"optimizer": "adamw"}
    # Options measured as losers (docs/experiments.md) and removed: a run folder's recorded
    # settings hold them off, at these values, and still resume.
    REMOVED_FIELDS: ClassVar[dict[str, Any]] = {"word_dropout": 0.0, "code_dropout": 0.0}

    def __post_init__(self) -> None:
        _check_recipe(self.steps, self.batch_size, self.lr)
        for name in ("caption_dropout", "colour_dropout"):
            p = getattr(self, name)
            require(0.0 <= p < 1.0, f"{name} must be in [0, 1), got {p}")
        require(
            self.text_weight >= 0 and self.image_weight >= 0,
            f"loss weights must be >= 0, got {self.text_weight}, {self.image_weight}",
        )
        self.optim()  # accumulation, precision and the weight average are checked there

    def optim(self) -> OptimConfig:
        return _optim(
            self,
            betas=(0.9, 0.95),
            accumulate=self.accumulate,
            precision=self.precision,
            ema=self.ema,
            optimizer=self.optimizer,
        )


@dataclass(frozen=True)
class CLIPTrainConfig:
    """Optimisation of CLIP on image-caption batches (minutes on a CPU for the shapes)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1.5e-3  # 900 steps: 3e-3 -> 80 %, 1.5e-3 -> 91 %, 8e-4 -> 88 % text->image top-1
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "fp32"  # or bf16 (autocast), fp16 (autocast + gradient scaler, CUDA)

    def __post_init__(self) -> None:
        _check_recipe(self.steps, self.batch_size, self.lr, min_batch=2)
        self.optim()  # the precision is checked there

    def optim(self) -> OptimConfig:
        return _optim(self, betas=(0.9, 0.98), precision=self.precision)
