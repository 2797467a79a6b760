"""One training loop for every model: each model supplies only an objective.

An objective maps ``(model, batch, step)`` to ``(loss, metrics)``. The loop owns the rest:
AdamW (no weight decay on biases, norms and embeddings), warm-up + cosine learning rate,
gradient clipping, seeding, a progress bar, JSONL metrics, periodic callbacks (model folders,
sample grids) and training checkpoints that resume exactly (``dalle.train.checkpoint``). An
objective with random state of its own exposes it as ``state_dict`` / ``load_state_dict``.
Ctrl-C (SIGINT) stops the run at the end of the step it lands in, so the checkpoint saved then
never holds a half-applied optimizer update; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from dalle.train import distributed
from dalle.train.checkpoint import CheckpointConfig, load_latest, save_checkpoint
from dalle.train.schedules import lr_factor


class Objective(Protocol):
    def __call__(
        self, model: torch.nn.Module, batch: Any, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


PRECISIONS = ("fp32", "bf16", "fp16")


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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.accumulate < 1 or self.max_bad_steps < 1:
            raise ValueError(
                f"steps, accumulate and max_bad_steps must be >= 1, got {self.steps}, "
                f"{self.accumulate}, {self.max_bad_steps}"
            )
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {self.ema}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def of(cls, recipe: Any, **extra: Any) -> OptimConfig:
        """The optimisation fields of a model's training config (steps, lr, warm-up, decay,
        clipping; accumulation, precision and the bad-step limit where it has them), plus
        ``extra``."""
        names = ("steps", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip")
        optional = ("accumulate", "precision", "max_bad_steps", "ema")
        fields = {n: getattr(recipe, n) for n in names}
        fields |= {n: getattr(recipe, n) for n in optional if hasattr(recipe, n)}
        return cls(**fields, **extra)


@dataclass
class Callback:
    every: int
    fn: Callable[[int], None]  # called with the number of steps done


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels; never biases, norms or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "emb" in name or "norm" in name or name.endswith(".b")
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def train(
    model: torch.nn.Module,
    objective: Objective,
    batches: Iterator[Any],
    cfg: OptimConfig,
    run_dir: Path,
    callbacks: list[Callback] = (),  # type: ignore[assignment]
    desc: str = "train",
    progress: bool = True,
    step_offset: int = 0,
    checkpoint: CheckpointConfig | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Run ``cfg.steps`` optimisation steps; returns the last logged metrics. ``step_offset``
    shifts the step numbers that metrics and callbacks see (a later phase of one run).

    With ``checkpoint``, the full training state is saved every ``checkpoint.every`` steps, at
    the end and on Ctrl-C. ``resume`` restores the newest checkpoint in ``run_dir`` and draws
    (and drops) as many batches as it had used, so the run continues exactly as if it had
    never stopped, given the same ``batches`` iterator and settings.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None and step_offset:
        raise ValueError("checkpoints cover single-phase runs (step_offset 0)")
    device = next(model.parameters()).device
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device; use bf16 on this machine")
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    ema = None
    if cfg.ema is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))  # parameters
    start = _resume(run_dir, model, opt, scaler, ema, objective, cfg) if resume else 0
    world, main = distributed.world_size(), distributed.is_main()
    if world > 1:  # every rank draws the global batch and keeps its slice
        batches = (distributed.shard(b, distributed.rank(), world) for b in batches)
    for _ in range(start * cfg.accumulate):  # the data position: batch iterators are deterministic
        next(batches)
    model.train()
    last: dict[str, float] = {}
    done, skipped, in_a_row, samples = start, 0, 0, 0

    saved_at, saved_step = time.perf_counter(), start

    def save(step: int) -> None:
        nonlocal saved_at, saved_step
        state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        state["scaler"] = scaler.state_dict()
        state["ema"] = ema.state_dict() if ema is not None else {}
        state["rng"] = torch.get_rng_state()
        state["objective"] = objective.state_dict() if hasattr(objective, "state_dict") else {}
        save_checkpoint(run_dir, step, state, checkpoint.keep)  # type: ignore[union-attr]
        saved_at, saved_step = time.perf_counter(), step

    def forward_backward(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``accumulate`` batches of one step; stops at the first non-finite loss (the rest of
        the step's batches are still drawn, so the data position never depends on it)."""
        nonlocal samples
        for i in range(cfg.accumulate):
            batch = next(batches)
            samples += world * batch_len(batch)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, metrics = objective(model, to_device(batch, device), step)
            if not torch.isfinite(loss):
                for _ in range(cfg.accumulate - i - 1):
                    next(batches)
                return loss, metrics
            scaler.scale(loss / cfg.accumulate).backward()
        return loss, metrics

    t0 = time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc=desc,
        unit="step",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    metrics_path = run_dir / "metrics.jsonl" if main else Path(os.devnull)
    with open(metrics_path, "a", encoding="utf-8") as log, _sigint_at_step_end() as stop:
        try:
            for step in bar:
                lr = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss, metrics = forward_backward(step)
                finite = distributed.all_ranks_agree(bool(torch.isfinite(loss)), device)
                if finite:
                    distributed.average_gradients(model)
                if finite and cfg.grad_clip:
                    scaler.unscale_(opt)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    metrics["grad_norm"] = float(norm)
                    finite = bool(torch.isfinite(norm))
                if finite:
                    scaler.step(opt)
                    scaler.update()
                    if ema is not None:
                        ema.update_parameters(model)
                    in_a_row = 0
                else:
                    opt.zero_grad(set_to_none=True)
                    skipped, in_a_row = skipped + 1, in_a_row + 1
                    if in_a_row >= cfg.max_bad_steps:
                        raise ValueError(
                            f"{desc}: the loss or gradient was not finite for {in_a_row} steps "
                            f"in a row (last at step {step}); lower --lr"
                        )
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    elapsed = time.perf_counter() - t0
                    last = {
                        "step": step_offset + done,
                        "loss": float(loss.detach()),
                        "lr": lr,
                        "elapsed_s": round(elapsed, 2),
                        "samples_per_s": round(samples / elapsed, 1),
                        **metrics,
                        "skipped_steps": skipped,
                    }
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in metrics.items() if k != "grad_norm"}
                        | {"loss": f"{float(loss.detach()):.4g}", "lr": f"{lr:.2e}"}
                        | {"samples/s": f"{samples / elapsed:.1f}"}
                    )
                if ema is not None and done == cfg.steps:  # the average is the result
                    model.load_state_dict(ema.module.state_dict())
                if stop:  # Ctrl-C during this step: save it whole (below) and stop
                    raise KeyboardInterrupt
                if not main:
                    continue
                since = time.perf_counter() - saved_at
                if checkpoint is not None and (
                    done == cfg.steps or checkpoint.due(done, saved_step, since)
                ):
                    save(done)
                for cb in callbacks:
                    if done % cb.every == 0 or done == cfg.steps:
                        model.eval()
                        cb.fn(step_offset + done)
                        model.train()
        except KeyboardInterrupt:
            if main and checkpoint is not None and done > start:
                save(done)  # the state after the last whole step
                print(f"\n{desc}: interrupted; saved step {done}, continue with --resume")
            raise
    model.eval()
    return last


@contextmanager
def _sigint_at_step_end() -> Iterator[list[int]]:
    """While active, a first SIGINT is only recorded in the yielded list (the loop checks it
    after each whole step) and a second one raises ``KeyboardInterrupt`` as usual. Left alone
    outside the main thread or when the caller has its own SIGINT handler."""
    stop: list[int] = []
    ours = threading.current_thread() is threading.main_thread()
    if not ours or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield stop
        return

    def record(signum: int, frame: object) -> None:
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, record)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _resume(
    run_dir: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: torch.nn.Module | None,
    objective: Objective,
    cfg: OptimConfig,
) -> int:
    """Load the newest checkpoint of ``run_dir`` into the training state; returns its step."""
    state = load_latest(run_dir)
    if state is None:
        raise ValueError(f"nothing to resume: {run_dir} has no readable checkpoint")
    step = int(state["step"])
    if step > cfg.steps:
        raise ValueError(f"the checkpoint is at step {step}, past the run's {cfg.steps} steps")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"the checkpoint does not fit this model: {first}") from None
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if not state.get("ema"):
            raise ValueError("the checkpoint has no weight average; resume without --ema")
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng"])
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(state["objective"])
    if distributed.is_main():
        _trim_metrics(run_dir / "metrics.jsonl", step)
    return step


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the metrics lines logged after ``step`` (the resumed run logs them again)."""
    if not path.is_file():
        return
    from dalle.io import write_bytes_atomic

    def before(line: str) -> bool:  # a line torn by a crash mid-write is dropped too
        try:
            return json.loads(line).get("step", 0) <= step
        except (json.JSONDecodeError, AttributeError):
            return False

    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = [x for x in lines if x.strip() and before(x)]
    write_bytes_atomic(path, "".join(x + "\n" for x in kept).encode())


def batch_len(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor or list (0 when it has none)."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()), [])
    if isinstance(batch, tuple) and batch:
        return batch_len(batch[0])
    return len(batch) if isinstance(batch, (torch.Tensor, list)) else 0


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def steps_for_budget(
    model: torch.nn.Module,
    objective: Objective,
    batches: Iterator[Any],
    seconds: float,
    probe: int = 10,
    at_least: int = 10,
    warmup: int = 3,
) -> int:
    """How many steps of ``objective`` fit in ``seconds``: times ``probe`` steps (after
    ``warmup`` untimed ones: the first steps pay for allocations and kernel selection) on a
    throwaway copy of ``model``, so the model itself is untouched."""
    import copy

    trial = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(trial.parameters(), lr=0.0)
    t0 = 0.0
    for i in range(warmup + probe):
        if i == warmup:
            t0 = time.perf_counter()
        loss, _ = objective(trial, next(batches), 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - t0) / probe
    return max(at_least, int(seconds / per_step))
