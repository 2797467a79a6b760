"""The shared training loop: gradient accumulation, non-finite steps, bf16 autocast."""

from __future__ import annotations

import itertools

import pytest
import torch

from dalle.train.loop import train
from dalle.train.train_config import OptimConfig


class Regression:
    """Mean squared error of a linear model; ``nan_at`` steps return a NaN loss."""

    def __init__(self, nan_at: set[int] = frozenset()):
        self.nan_at = nan_at

    def __call__(self, model, batch, step):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        if step in self.nan_at:
            loss = loss * float("nan")
        return loss, {}


def _batches(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * size, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n * size, 1, generator=g)
    return list(zip(x.split(size), y.split(size), strict=True))


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    halves = _batches(8, 4)
    fulls = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
        for a, b in zip(halves[::2], halves[1::2], strict=True)
    ]
    a, b = _model(), _model()
    cfg = OptimConfig(steps=4, lr=0.1, grad_clip=None)
    train(a, Regression(), iter(fulls), cfg, tmp_path / "a", progress=False)
    train(
        b,
        Regression(),
        iter(halves),
        OptimConfig(steps=4, lr=0.1, grad_clip=None, accumulate=2),
        tmp_path / "b",
        progress=False,
    )
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path):
    batches = _batches(6, 8)
    skipping, reference = _model(), _model()
    last = train(
        skipping,
        Regression(nan_at={2}),
        iter(batches),
        OptimConfig(steps=6, lr=0.1),
        tmp_path / "a",
        progress=False,
    )
    assert last["skipped_steps"] == 1
    # Skipping step 2 = training on the other batches with the same learning rates.
    from dalle.train.schedules import lr_factor

    opt = torch.optim.AdamW(reference.parameters(), lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
    for step, (x, y) in enumerate(batches):
        if step == 2:
            continue
        for g in opt.param_groups:
            g["lr"] = 0.1 * lr_factor(step, 6, 0, 0.1)
        opt.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        opt.step()
    for p, q in zip(skipping.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path):
    cfg = OptimConfig(steps=10, lr=0.1, max_bad_steps=3)
    with pytest.raises(ValueError, match="not finite for 3 steps in a row"):
        train(
            _model(),
            Regression(nan_at={4, 5, 6}),
            iter(_batches(10, 4)),
            cfg,
            tmp_path,
            progress=False,
        )
    # Two in a row, then a good step, then two more: never three in a row.
    last = train(
        _model(),
        Regression(nan_at={1, 2, 4, 5}),
        iter(_batches(10, 4)),
        cfg,
        tmp_path,
        progress=False,
    )
    assert last["skipped_steps"] == 4


def test_bf16_autocast_trains(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    batches = itertools.cycle(_batches(4, 32))
    first = Regression()(model, next(iter(_batches(1, 32))), 0)[0].item()
    last = train(
        model,
        Regression(),
        batches,
        OptimConfig(steps=60, lr=0.01, precision="bf16"),
        tmp_path,
        progress=False,
    )
    assert last["loss"] < 0.5 * first
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_bad_precision_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        OptimConfig(steps=1, lr=0.1, precision="fp8")
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device"):
        train(
            _model(),
            Regression(),
            iter(_batches(1, 4)),
            OptimConfig(steps=1, lr=0.1, precision="fp16"),
            tmp_path,
            progress=False,
        )


def test_ema_of_the_weights_matches_a_hand_computed_average(tmp_path):
    from dalle.train.loop import Callback

    batches = _batches(5, 8)
    seen: list[torch.Tensor] = []
    plain = _model()
    record = Callback(1, lambda step: seen.append(plain.weight.detach().clone()))
    train(
        plain,
        Regression(),
        iter(batches),
        OptimConfig(steps=5, lr=0.1),
        tmp_path / "a",
        [record],
        progress=False,
    )
    expected = seen[0]
    for w in seen[1:]:
        expected = 0.6 * expected + 0.4 * w
    averaged = _model()
    train(
        averaged,
        Regression(),
        iter(batches),
        OptimConfig(steps=5, lr=0.1, ema=0.6),
        tmp_path / "b",
        progress=False,
    )
    torch.testing.assert_close(averaged.weight.detach(), expected)
    assert not torch.allclose(averaged.weight, plain.weight)
    with pytest.raises(ValueError, match="ema decay must be in"):
        OptimConfig(steps=1, lr=0.1, ema=1.0)


class Timed(Regression):
    """Regression that sleeps ``per_step`` seconds a call and ``first`` more on its first call
    (a stand-in for a compile); it records the autocast dtype each call ran under."""

    def __init__(self, per_step: float, first: float = 0.0):
        super().__init__()
        self.per_step, self.first, self.calls, self.dtypes = per_step, first, 0, []

    def __call__(self, model, batch, step):
        import time

        time.sleep(self.per_step + (self.first if self.calls == 0 else 0.0))
        self.calls += 1
        self.dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return super().__call__(model, batch, step)


def test_steps_for_budget_times_the_trainers_step_and_charges_its_own_seconds():
    from dalle.train.budget import steps_for_budget

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = Timed(0.02)
    n = steps_for_budget(model, plain, itertools.cycle(_batches(4, 8)), 2.0, probe=5, warmup=2)
    assert plain.calls == 7 and plain.dtypes == [None] * 7
    assert 80 <= n <= 97  # (2 s - the probe's ~0.14 s) / 0.02 s, less Python overhead
    compiled = Timed(0.02, first=0.5)  # a compile in the probe: 0.5 s of the 2 s are gone
    m = steps_for_budget(model, compiled, itertools.cycle(_batches(4, 8)), 2.0, probe=5, warmup=2)
    assert 55 <= m <= 72
    bf16 = Timed(0.0)
    optim = OptimConfig(steps=1, lr=1e-3, precision="bf16")
    steps_for_budget(model, bf16, itertools.cycle(_batches(4, 8)), 1.0, optim, probe=2, warmup=1)
    assert bf16.dtypes == [torch.bfloat16] * 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_bf16_pays_off_answers_from_a_quick_timing():
    import time

    from dalle.train.budget import bf16_pays_off

    t0 = time.perf_counter()
    answer = bf16_pays_off()
    assert isinstance(answer, bool) and time.perf_counter() - t0 < 10



class FakeClock:
    """A clock that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_step_plan_fills_its_seconds_from_the_measured_step_time():
    from dalle.train.loop import StepPlan

    clock = FakeClock()
    plan = StepPlan(100.0, skip=10, every=25, clock=clock)
    steps = 1000  # a probe's plan, far too many for 100 s at 1 s a step
    clock.now = 5.0  # a compile in the first step: not counted as the rate
    for done in range(1, 36):
        clock.now += 1.0
        if plan.due(done):
            assert done == 35  # re-planned every 25 steps after the first 10
            steps = plan.steps(done)
    # At 35 steps, 40 s have passed; 60 s are left at 1 s a step.
    assert clock.now == 40.0 and steps == 35 + 60
    for done in range(36, 61):  # the machine slows to 2 s a step
        clock.now += 2.0
        if plan.due(done):
            steps = plan.steps(done)
    # 90 s gone at 60 steps, (90 - 15) s / 50 steps since step 10: 1.5 s a step, 10 s left.
    assert steps == 60 + 6
    clock.now = 200.0  # past the limit: the run ends at the step it is on
    assert plan.due(85) and plan.steps(85) == 85
    with pytest.raises(ValueError, match="time limit must be > 0"):
        StepPlan(0.0)


def test_a_run_with_a_time_limit_ends_on_time_with_its_schedule_decayed(tmp_path):
    import json
    import time

    model = _model()
    cfg = OptimConfig(steps=2000, lr=0.1, warmup_steps=5, min_lr_ratio=0.1)
    t0 = time.perf_counter()
    train(model, Timed(0.01), itertools.cycle(_batches(4, 8)), cfg, tmp_path, progress=False,
          seconds=1.5)  # fmt: skip
    took = time.perf_counter() - t0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 1.2 < took < 2.0
    assert 40 <= rows[-1]["step"] <= 150  # ~1.5 s / (0.01 s + overhead), not 2 000
    assert rows[-1]["lr"] < 0.13  # the cosine ran down to the re-planned end (0.1 x 0.1 there)
    grown = _model()  # a plan of too few steps grows to fill the seconds
    train(grown, Timed(0.01), itertools.cycle(_batches(4, 8)), replace_steps(cfg, 40),
          tmp_path / "grown", progress=False, seconds=1.5)  # fmt: skip
    last = json.loads((tmp_path / "grown" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] > 60
    with pytest.raises(ValueError, match="cannot resume"):
        train(_model(), Timed(0.0), iter([]), cfg, tmp_path, seconds=1.0, resume=True)


def replace_steps(cfg: OptimConfig, steps: int) -> OptimConfig:
    import dataclasses

    return dataclasses.replace(cfg, steps=steps)
