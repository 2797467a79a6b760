"""``torch.compile`` behind an option: the compiled decode step gives the eager step's logits
(<= 1e-4) for every attention kind and with a product codebook, without compiling
again per step; compiled sampling draws the eager codes; the compiled training loss and its
gradients match; a failing compiler is one warning line and the eager path.

Each model compiles once per module (the compiled step is kept per model), so the file costs
a few compiles of tiny models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from dalle.compiling import Compiled
from dalle.config import TransformerConfig
from dalle.models.dalle_transformer import DALLE
from dalle.sampler import compiled_step
from dalle.train.train_config import TransformerTrainConfig
from dalle.train.transformer_trainer import DalleObjective, dalle_loss
from model_fixtures import sample_codes, sharp_dalle

BASE = TransformerConfig(
    text_vocab=20, text_len=4, image_vocab=24, image_grid=4, dim=32, depth=4, heads=4,
    attention=("full", "row", "column", "conv"), conv_kernel=3,
)  # fmt: skip
CONFIGS = {  # every attention kind in one model, then the option that changes the graph
    "kinds": BASE,
    "palette": dataclasses.replace(BASE, image_palette=4, depth=2, attention=("full", "conv")),
}


@pytest.fixture(scope="module")
def models() -> dict[str, DALLE]:
    return {name: sharp_dalle(cfg) for name, cfg in CONFIGS.items()}


TEXT = torch.tensor([[3, 5, 0, 0], [7, 1, 2, 9], [4, 0, 0, 0]])


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_compiled_step_matches_the_eager_step_for_every_kind(models, name):
    model = models[name]
    cfg = model.cfg
    codes = torch.randint(0, cfg.image_vocab, (cfg.image_len, 3), generator=torch.Generator())
    step = compiled_step(model)
    with torch.no_grad():
        eager, compiled = model.new_cache(3), model.new_cache(3)
        for buffer in (compiled.k, compiled.v):  # as the Sampler does: any batch size > 1
            torch._dynamo.maybe_mark_dynamic(buffer, 1)
        torch.testing.assert_close(
            model.prefill(TEXT, eager), model.prefill(TEXT, compiled), atol=0, rtol=0
        )
        for i in range(cfg.image_len - 1):
            start = compiled.pos
            got = step(model, codes[i].clone(), compiled, start)  # as the Sampler feeds it
            compiled.pos = start + 1
            want = model.step(codes[i], eager, eager.pos)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
            if i == 1:  # compiled by now: the later positions reuse the graph
                before = graphs()
        assert graphs() == before, "the compiled step compiled again for a later position"
    torch.testing.assert_close(compiled.k, eager.k, atol=1e-5, rtol=0)
    assert not step.failed and step.compile_s > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_compiled_sampling_draws_the_eager_codes(models, name):
    """Logits agree to float rounding, so with sharp logits the same seed draws the same codes
    (a draw sitting on a probability boundary could differ: none does here)."""
    model = models[name]
    for options in (dict(), dict(cond_scale=3.0), dict(top_k=3, prime=TEXT[:, :4] % 20)):
        eager = sample_codes(model, TEXT, generator=torch.Generator().manual_seed(5), **options)
        fast = sample_codes(
            model, TEXT, generator=torch.Generator().manual_seed(5), compile=True, **options
        )
        assert torch.equal(fast, eager), options


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [{}, {"colour_dropout": 0.5}])  # the demo's recipe
def test_compiled_training_loss_and_gradients_match_eager(dropout):
    palette = 4 if dropout else 0
    cfg = dataclasses.replace(BASE, depth=2, attention=("full", "row"), image_palette=palette)
    model = sharp_dalle(cfg).train()
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 20, (4, 4), generator=g)
    codes = torch.randint(0, 24, (4, 16), generator=g)
    cfg = TransformerTrainConfig(caption_dropout=0.0, **dropout)
    losses, grads = [], []
    objectives = (  # the same generator seed: the same masks
        DalleObjective(cfg, torch.Generator().manual_seed(2)),
        DalleObjective(cfg, torch.Generator().manual_seed(2), compile=True),
    )
    for objective in objectives:
        loss, metrics = objective(model, (text, codes), 0)
        model.zero_grad()
        loss.backward()
        losses.append((loss.item(), metrics["text_loss"], metrics["image_loss"]))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert not objective.terms.failed
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    plain = dalle_loss(model, text, codes)[0].item()
    assert (losses[0][0] == pytest.approx(plain)) == (not dropout)


def test_a_failing_compiler_warns_once_and_runs_eagerly(monkeypatch, capsys):
    """No working compiler (here: torch.compile raising at once, or at the first call as a
    missing C++ compiler would): one warning line, then the eager path, which draws exactly
    what sampling without ``compile`` draws."""
    model = sharp_dalle(BASE)
    want = sample_codes(model, TEXT, generator=torch.Generator().manual_seed(5), cond_scale=2.0)

    def broken(fn, **options):
        raise RuntimeError("Compiler: cc not found\nmore detail")

    def broken_later(fn, **options):
        def run(*args):
            raise OSError("InductorError: C++ compile error")

        return run

    for compile_ in (broken, broken_later):
        monkeypatch.setattr(torch, "compile", compile_)
        model = sharp_dalle(BASE)
        for _ in range(2):
            got = sample_codes(
                model, TEXT, generator=torch.Generator().manual_seed(5), cond_scale=2.0,
                compile=True,
            )  # fmt: skip
            assert torch.equal(got, want)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: torch.compile failed"), err
        assert "decode step" in err[0] and "running it eagerly" in err[0]
    wrapped = Compiled(lambda x: x + 1, "a test")
    assert wrapped(torch.ones(1)).item() == 2 and wrapped.failed
    assert "a test" in capsys.readouterr().err
