"""One training loop for every model: each model supplies only an objective.

An objective maps ``(model, batch, step)`` to ``(loss, metrics)``. The loop owns the rest:
AdamW (``dalle.train.optimizer``), warm-up + cosine learning rate, gradient clipping, seeding,
a progress bar, JSONL metrics (``dalle.train.metrics_log``), periodic callbacks (model folders,
sample grids) and training checkpoints that resume exactly (``dalle.train.checkpoint``). An
objective with random state of its own exposes it as ``state_dict`` / ``load_state_dict``.
Ctrl-C (SIGINT) stops the run at the end of the step it lands in (``dalle.train.interrupt``),
so the checkpoint saved then never holds a half-applied optimizer update; a second Ctrl-C
interrupts at once. How many steps fit in a time budget is :mod:`dalle.train.budget`'s.
Under ``torchrun`` the objective runs inside DDP (:mod:`dalle.train.distributed`), or with
``shard`` inside FSDP2 (:mod:`dalle.train.sharding`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from tqdm import tqdm

from dalle.train import distributed
from dalle.train.batching import batch_len, to_device
from dalle.train.checkpoint import checkpoint_path, load_latest, save_checkpoint
from dalle.train.interrupt import sigint_at_step_end
from dalle.train.metrics_log import trim_metrics
from dalle.train.optimizer import make_optimizer
from dalle.train.schedules import lr_factor
from dalle.train.sharding import Sharded, remove_orphans, shard_folder
from dalle.train.train_config import CheckpointConfig, OptimConfig


class Objective(Protocol):
    def __call__(
        self, model: torch.nn.Module, batch: Any, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class SeededObjective:
    """An objective that draws random numbers (noise, dropout) from its own generator, whose
    state it exposes to training checkpoints so that a resumed run draws the same numbers."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])


@dataclass
class Callback:
    """``fn(step)`` every ``every`` steps and after the last one, or (with ``at``) only at
    those steps."""

    every: int
    fn: Callable[[int], None]  # called with the number of steps done
    at: Collection[int] = ()

    def due(self, done: int, last: int, step: int) -> bool:
        """Whether it runs after ``done`` of ``last`` steps (``step``: the number it sees)."""
        if self.at:
            return step in self.at
        return done % self.every == 0 or done == last


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
    shard: bool = False,
    seconds: float | None = None,
) -> dict[str, float]:
    """Run ``cfg.steps`` optimisation steps; returns the last logged metrics. ``step_offset``
    shifts the step numbers that metrics and callbacks see (a later phase of one run).
    ``shard``: under ``torchrun``, FSDP2 instead of DDP (:mod:`dalle.train.sharding`).
    With ``seconds`` the run ends that many wall-clock seconds after it starts: ``cfg.steps``
    is only the first plan, re-planned from the run's own measured step time
    (:class:`StepPlan`), and the learning-rate schedule follows the plan.

    With ``checkpoint``, the full training state is saved every ``checkpoint.every`` steps, at
    the end and on Ctrl-C. ``resume`` restores the newest checkpoint in ``run_dir`` and draws
    (and drops) as many batches as it had used, so the run continues exactly as if it had
    never stopped, given the same ``batches`` iterator and settings.
    """
    if checkpoint is not None and step_offset:
        raise ValueError("checkpoints cover single-phase runs (step_offset 0)")
    if seconds is not None and resume:
        raise ValueError("a run with a time limit cannot resume: its step count is not fixed")
    trainer = Trainer(model, objective, batches, cfg, Path(run_dir), checkpoint, shard)
    plan = StepPlan(seconds) if seconds is not None else None
    return trainer.run(list(callbacks), desc, progress, step_offset, resume, plan)


class StepPlan:
    """How many steps fit in a run of ``seconds`` wall-clock seconds, re-planned as the run
    goes: every ``every`` steps, the seconds left divided by the seconds per step measured
    since step ``skip`` (so a first step's compile or warm-up does not count as the rate,
    while every second of the loop, logging, saves and callbacks included, does).

    A probe times a few steps before a run; the run itself is slower or faster (a machine's
    clock under sustained load, its saves and callbacks): the demo's probe planned 342 s for
    a transformer whose steps then took 406 s. Re-planning holds the run to its budget."""

    def __init__(
        self,
        seconds: float,
        skip: int = 10,
        every: int = 25,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if seconds <= 0:
            raise ValueError(f"a run's time limit must be > 0 seconds, got {seconds}")
        self.seconds, self.skip, self.every, self.clock = seconds, skip, every, clock
        self.start = self.mark = clock()
        self.marked = 0  # the step count at ``mark``

    def due(self, done: int) -> bool:
        """Whether to re-plan after ``done`` steps (the same steps on every rank)."""
        if done <= self.skip:
            self.mark, self.marked = self.clock(), done
            return False
        return (done - self.skip) % self.every == 0

    def steps(self, done: int) -> int:
        """The run's step count, planned after ``done`` steps: at least ``done``."""
        now = self.clock()
        left = self.seconds - (now - self.start)
        per_step = (now - self.mark) / (done - self.marked)
        return done + max(0, int(left / per_step))


class Trainer:
    """One run of the loop: the model, its optimizer, gradient scaler and weight average, the
    data position and the counters that metrics and checkpoints report."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        batches: Iterator[Any],
        cfg: OptimConfig,
        run_dir: Path,
        checkpoint: CheckpointConfig | None = None,
        shard: bool = False,
    ):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.device = next(model.parameters()).device
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 training needs a CUDA device; use bf16 on this machine")
        self.model = self.host = model  # what is trained; what callbacks and the caller see
        self.objective, self.cfg = objective, cfg
        self.run_dir, self.checkpoint = run_dir, checkpoint
        self.world, self.main = distributed.world_size(), distributed.is_main()
        self.sharded: Sharded | None = None
        if shard and self.world > 1:
            if cfg.ema is not None or cfg.precision == "fp16" or cfg.optimizer != "adamw":
                raise ValueError(
                    "--shard trains with --optimizer adamw in fp32 or bf16 without --ema"
                )
            self.sharded = Sharded(model, objective, bf16=cfg.precision == "bf16")
            self.model, self.compute = self.sharded.model, self.sharded.module
            self.device = self.sharded.device
        else:
            self.compute = distributed.data_parallel(model, objective)
        self.opt = make_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.ema = None
        if cfg.ema is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))
        if self.world > 1:  # every rank draws the global batch and keeps its slice
            rank = distributed.rank()
            batches = (distributed.shard(b, rank, self.world) for b in batches)
        self.batches = batches
        self.gathered = -1  # the step whose weights the host model holds (sharded runs)
        self.steps = cfg.steps  # the plan: a run with a time limit re-plans it
        self.done = self.skipped = self.in_a_row = self.samples = 0
        self.saved_at, self.saved_step = time.perf_counter(), 0
        self.last: dict[str, float] = {}

    def run(
        self,
        callbacks: list[Callback],
        desc: str = "train",
        progress: bool = True,
        step_offset: int = 0,
        resume: bool = False,
        plan: StepPlan | None = None,
    ) -> dict[str, float]:
        """The loop: step, log, checkpoint, call back; see :func:`train`."""
        cfg = self.cfg
        start = self.resume() if resume else 0
        self.done = self.saved_step = start
        for _ in range(start * cfg.accumulate):  # the data position: batches are deterministic
            next(self.batches)
        self.model.train()
        t0 = time.perf_counter()
        bar = tqdm(initial=start, total=self.steps, desc=desc, unit="step",
                   disable=not (progress and self.main), dynamic_ncols=True)  # fmt: skip
        metrics_path = self.run_dir / "metrics.jsonl" if self.main else Path(os.devnull)
        with open(metrics_path, "a", encoding="utf-8") as log, sigint_at_step_end() as stop:
            try:
                while self.done < self.steps:
                    lr, loss, metrics = self.step(self.done, desc)
                    self.done += 1
                    bar.update()
                    if plan is not None and plan.due(self.done):
                        self.steps = distributed.fewest(plan.steps(self.done), self.device)
                        bar.total = self.steps
                    if self.done % cfg.log_every == 0 or self.done == self.steps:
                        self.log(log, bar, step_offset, lr, loss, metrics, t0)
                    if self.ema is not None and self.done == self.steps:  # the average is the result
                        self.model.load_state_dict(self.ema.module.state_dict())
                    if stop:  # Ctrl-C during this step: save it whole (below) and stop
                        raise KeyboardInterrupt
                    if self.main or self.sharded:  # every rank writes its shards
                        self.save_due()
                    self.call_back(callbacks, step_offset)
            except KeyboardInterrupt:
                # A sharded save needs every rank at the same step, which Ctrl-C cannot
                # promise: such a run resumes from its last periodic checkpoint.
                saves = self.checkpoint is not None and self.done > start and not self.sharded
                if self.main and saves:
                    self.save()  # the state after the last whole step
                    print(f"\n{desc}: interrupted; saved step {self.done}, continue with --resume")
                raise
            finally:
                bar.close()
        self.gather()
        self.host.eval()
        return self.last

    def step(self, step: int, desc: str) -> tuple[float, torch.Tensor, dict[str, float]]:
        """One optimisation step at the scheduled learning rate; a step whose loss or gradient
        is not finite is skipped (``max_bad_steps`` in a row stop the run)."""
        cfg = self.cfg
        lr = cfg.lr * lr_factor(step, self.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss, metrics, finite = self.forward_backward(step)
        if finite and cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if hasattr(norm, "full_tensor"):  # a sharded model's norm is a DTensor
                norm = norm.full_tensor()
            metrics["grad_norm"] = float(norm)
            finite = bool(torch.isfinite(norm))
        if finite:
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.in_a_row = 0
        else:
            self.opt.zero_grad(set_to_none=True)
            self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
            if self.in_a_row >= cfg.max_bad_steps:
                raise ValueError(
                    f"{desc}: the loss or gradient was not finite for {self.in_a_row} steps "
                    f"in a row (last at step {step}); lower --lr"
                )
        return lr, loss, metrics

    def forward_backward(self, step: int) -> tuple[torch.Tensor, dict[str, float], bool]:
        """``accumulate`` batches of one step, and whether every rank's loss was finite; stops
        at the first non-finite loss on any rank, before its backward pass, so the ranks'
        gradient all-reduces stay in step (the rest of the step's batches are still drawn, so
        the data position never depends on it). Under DDP only the last batch's backward
        all-reduces; the others accumulate locally."""
        accumulate = self.cfg.accumulate
        autocast = torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )
        for i in range(accumulate):
            batch = next(self.batches)
            self.samples += self.world * batch_len(batch)
            with self.local_only(i < accumulate - 1):
                with autocast:
                    loss, metrics = self.compute(to_device(batch, self.device), step)
                if not distributed.all_ranks_agree(bool(torch.isfinite(loss)), self.device):
                    for _ in range(accumulate - i - 1):
                        next(self.batches)
                    return loss, metrics, False
                self.scaler.scale(loss / accumulate).backward()
        return loss, metrics, True

    def local_only(self, on: bool) -> contextlib.AbstractContextManager:
        """With ``on``, the backward passes inside only add to this rank's gradients (no
        all-reduce or reduce-scatter): every batch of an accumulated step but the last."""
        if self.sharded is not None:
            self.sharded.accumulating(on)
        elif on and hasattr(self.compute, "no_sync"):
            return self.compute.no_sync()
        return contextlib.nullcontext()

    def log(
        self,
        log: IO[str],
        bar: tqdm,
        step_offset: int,
        lr: float,
        loss: torch.Tensor,
        metrics: dict[str, float],
        t0: float,
    ) -> None:
        """One line of ``metrics.jsonl`` and the progress bar's figures."""
        elapsed = time.perf_counter() - t0
        value = float(loss.detach())
        self.last = {
            "step": step_offset + self.done,
            "loss": value,
            "lr": lr,
            "elapsed_s": round(elapsed, 2),
            "samples_per_s": round(self.samples / elapsed, 1),
            **metrics,
            "skipped_steps": self.skipped,
        }
        log.write(json.dumps(self.last) + "\n")
        log.flush()
        bar.set_postfix(
            {k: f"{v:.4g}" for k, v in metrics.items() if k != "grad_norm"}
            | {"loss": f"{value:.4g}", "lr": f"{lr:.2e}"}
            | {"samples/s": f"{self.samples / elapsed:.1f}"}
        )

    def save_due(self) -> None:
        """A checkpoint after the last step, and whenever the checkpoint config says so."""
        if self.checkpoint is None:
            return
        since = time.perf_counter() - self.saved_at
        if self.done == self.steps or self.checkpoint.due(self.done, self.saved_step, since):
            self.save()

    def call_back(self, callbacks: list[Callback], step_offset: int) -> None:
        """Rank 0 runs the callbacks due after this step, on the host model (a sharded run
        first gathers its full weights there)."""
        step = step_offset + self.done
        due = [cb for cb in callbacks if cb.due(self.done, self.steps, step)]
        if due:
            self.gather()
        if not self.main:
            return
        for cb in due:
            self.host.eval()
            cb.fn(step)
            self.host.train()

    def gather(self) -> None:
        """The full weights of a sharded run into the host model on rank 0, once a step
        (every rank calls; a no-op without sharding)."""
        if self.sharded is not None and self.gathered != self.done:
            self.sharded.gather()
            self.gathered = self.done

    def save(self) -> None:
        """A training checkpoint of the state after ``done`` steps. A sharded run's ranks
        first write their shards (DCP), then rank 0 the checkpoint file that names them."""
        weights: dict[str, Any]
        if self.sharded is None:
            weights = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}
        else:
            shards = shard_folder(checkpoint_path(self.run_dir, self.done))
            if self.main:  # a killed run's unfinished folder of this step goes first
                shutil.rmtree(shards, ignore_errors=True)
            distributed.barrier()
            self.sharded.save(self.opt, shards)
            distributed.barrier()  # every rank's shards are on disk
            weights = {"model": {}, "optimizer": {}, "shards": shards.name}
        if self.main:
            objective = self.objective
            state = weights | {
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else {},
                "rng": torch.get_rng_state(),
                "objective": objective.state_dict() if hasattr(objective, "state_dict") else {},
            }
            path = save_checkpoint(self.run_dir, self.done, state, self.checkpoint.keep)  # type: ignore[union-attr]
            remove_orphans(path.parent)
        self.saved_at, self.saved_step = time.perf_counter(), self.done

    def resume(self) -> int:
        """Load the newest checkpoint of the run folder into the training state; returns its
        step."""
        state = load_latest(self.run_dir)
        if state is None:
            raise ValueError(f"nothing to resume: {self.run_dir} has no readable checkpoint")
        step = int(state["step"])
        if step > self.cfg.steps:
            raise ValueError(
                f"the checkpoint is at step {step}, past the run's {self.cfg.steps} steps"
            )
        shards = state.get("shards")
        if bool(shards) != (self.sharded is not None):
            kind, how = (
                ("sharded", "with --shard under torchrun")
                if shards
                else ("whole", "without --shard")
            )
            raise ValueError(f"the checkpoint at step {step} is {kind}: resume it {how}")
        try:
            if self.sharded is not None:
                self.sharded.load(self.opt, checkpoint_path(self.run_dir, step).parent / shards)
            else:
                self.model.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"the checkpoint does not fit this model: {first}") from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if not state.get("ema"):
                raise ValueError("the checkpoint has no weight average; resume without --ema")
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])
        if distributed.is_main():
            trim_metrics(self.run_dir / "metrics.jsonl", step)
        return step
