"""The Sampler: filters never let an excluded token through, draws follow the softmax, seeds
reproduce codes, the cache changes nothing, guidance and priming behave, inputs stay intact,
a guidance rule is a subclass, and the settings validate (once) and override field by field."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dalle.config import TransformerConfig
from dalle.models.dalle_transformer import DALLE
from dalle.sampler import Sampler, SettingError, guide, top_k_filter, top_p_filter
from model_fixtures import sample_codes, sharp_dalle

CFG = TransformerConfig(
    text_vocab=20, text_len=4, image_vocab=12, image_grid=3, dim=32, depth=2, heads=4,
    attention=("row", "conv"), conv_kernel=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> DALLE:
    return sharp_dalle(CFG)


@pytest.fixture
def text() -> torch.Tensor:
    return torch.tensor([[3, 5, 0, 0], [7, 1, 2, 9], [4, 0, 0, 0]])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(2000, 10, generator=gen(1))
    before = logits.clone()
    filtered = top_k_filter(logits, 3)
    assert torch.equal(logits, before)
    assert (torch.isfinite(filtered).sum(-1) == 3).all()
    top3 = logits.topk(3, dim=-1).indices
    draws = Sampler(top_k=3).draw(logits, gen())
    assert (draws[:, None] == top3).any(-1).all()
    assert torch.equal(top_k_filter(logits, 50), logits)


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(4000, 4)
    kept = torch.isfinite(top_p_filter(logits[:1], 0.7))[0]
    assert kept.tolist() == [False, True, False, True]  # 0.5 < 0.7, then 0.8 >= 0.7
    draws = Sampler(top_p=0.7).draw(logits, gen())
    assert set(draws.tolist()) == {1, 3}
    only_top = Sampler(top_p=1e-6).draw(logits, gen())
    assert (only_top == 1).all()  # the top token is always kept
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    both = Sampler(top_k=3, top_p=0.9).draw(logits, gen())
    assert set(both.tolist()) == {1, 2, 3}


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_draws_follow_softmax(temperature):
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 40000
    draws = Sampler(temperature=temperature).draw(logits.expand(n, 5), gen(3))
    freq = torch.bincount(draws, minlength=5).float() / n
    expected = F.softmax(logits / temperature, dim=-1)
    assert (freq - expected).abs().max() < 0.01


def test_same_seed_same_codes_and_cache_changes_nothing(model, text):
    a = sample_codes(model, text, generator=gen(5))
    b = sample_codes(model, text, generator=gen(5))
    c = sample_codes(model, text, generator=gen(5), use_cache=False)
    assert a.shape == (3, CFG.image_len) and a.dtype == torch.long
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, sample_codes(model, text, generator=gen(6)))


def test_top_k_one_is_greedy(model, text):
    codes = sample_codes(model, text, generator=gen(), top_k=1)
    o = CFG.text_vocab_total
    for i in range(CFG.image_len):
        logits = model(text, codes[:, :i])[:, -1, o:]
        assert torch.equal(codes[:, i], logits.argmax(-1))


def test_guidance(model, text):
    plain = sample_codes(model, text, generator=gen(7))
    assert torch.equal(plain, sample_codes(model, text, generator=gen(7), cond_scale=1.0))
    # scale 0 leaves only the unconditional rows: the same draws as all-pad captions
    uncond = sample_codes(model, text, generator=gen(7), cond_scale=0.0)
    pads = sample_codes(model, torch.zeros_like(text), generator=gen(7))
    assert torch.equal(uncond, pads) and not torch.equal(uncond, plain)
    guided = sample_codes(model, text, generator=gen(7), cond_scale=3.0)
    assert not torch.equal(guided, plain)
    slow = sample_codes(model, text, generator=gen(7), cond_scale=3.0, use_cache=False)
    assert torch.equal(guided, slow)
    cond, un = torch.randn(2, 5), torch.randn(2, 5)
    torch.testing.assert_close(guide(cond, un, 3.0), un + 3.0 * (cond - un))


def test_priming_keeps_rows_and_inputs_stay_intact(model, text):
    prime = torch.randint(0, CFG.image_vocab, (3, CFG.image_grid), generator=gen(8))
    text_copy, prime_copy = text.clone(), prime.clone()
    model.train()
    codes = sample_codes(model, text, generator=gen(9), prime=prime, cond_scale=2.0)
    assert model.training  # mode restored
    model.eval()
    assert torch.equal(text, text_copy) and torch.equal(prime, prime_copy)
    assert torch.equal(codes[:, : CFG.image_grid], prime)
    slow = sample_codes(model, text, generator=gen(9), prime=prime, cond_scale=2.0, use_cache=False)
    assert torch.equal(codes, slow)
    full = torch.randint(0, CFG.image_vocab, (3, CFG.image_len), generator=gen(8))
    out = sample_codes(model, text, prime=full)
    assert torch.equal(out, full) and out.data_ptr() != full.data_ptr()


def test_bad_inputs_raise(model, text):
    cases = [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(cond_scale=float("inf")), "cond_scale"),
        (dict(prime=torch.zeros(3, 2, dtype=torch.long)), "whole rows"),
        (dict(prime=torch.zeros(2, 3, dtype=torch.long)), r"shape \(3, n <= 9\)"),
        (dict(prime=torch.full((3, 3), 12)), r"image ids in \[0, 12\)"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            sample_codes(model, text, **kwargs)
    with pytest.raises(ValueError, match=r"text of shape \(B, 4\)"):
        sample_codes(model, text[:, :2])
    with pytest.raises(ValueError, match=r"logits of shape \(B, V\)"):
        Sampler().draw(torch.zeros(5))


def test_sampling_config_validates_each_field_in_one_line():
    assert dataclasses.astuple(Sampler()) == (1.0, None, None, None, None, 1.0, None)  # plain
    cases = [
        (dict(temperature=0), "temperature must be a finite number > 0, got 0"),
        (dict(temperature=float("inf")), "temperature must be"),
        (dict(temperature="1"), "temperature must be"),
        (dict(top_k=0), "top_k must be an integer >= 1, got 0"),
        (dict(top_k=2.0), "top_k must be"),
        (dict(top_k=True), "top_k must be"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), "top_p must be"),
        (dict(cond_scale=float("nan")), "cond_scale must be finite, got nan"),
        (dict(cond_scale=None), "cond_scale must be finite"),
        (dict(min_p=0.0), r"min_p must be in \(0, 1\], got 0.0"),
        (dict(typical_p=1.5), r"typical_p must be in \(0, 1\], got 1.5"),
        (dict(rerank=0), "rerank must be an integer >= 1, got 0"),
        (dict(rerank=2.0), "rerank must be"),
    ]
    for kwargs, match in cases:
        with pytest.raises(SettingError, match=match) as e:
            Sampler(**kwargs)
        assert "\n" not in str(e.value) and e.value.name == next(iter(kwargs))
    ok = Sampler(temperature=1e-6, top_k=1, top_p=1.0, cond_scale=-2, rerank=1)
    assert ok.cond_scale == -2  # guidance away from the caption is allowed, if odd


def test_sampling_config_overrides_single_fields():
    base = Sampler(temperature=0.5, top_k=8, cond_scale=2.0)
    assert base.override(temperature=0.7) == Sampler(0.7, 8, None, None, None, 2.0, None)
    assert base.override(top_k=None) == Sampler(0.5, None, None, None, None, 2.0, None)  # off
    assert base.override() == base
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['temprature'\]"):
        base.override(temprature=0.7)
    with pytest.raises(ValueError, match="temperature must be"):
        base.override(temperature=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.temperature = 2.0  # type: ignore[misc]


def test_min_p_keeps_the_codes_at_least_that_fraction_of_the_best():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # 0.15 / 0.5 = 0.3, 0.05 / 0.5 = 0.1
    logits = probs.log().expand(4000, 4)
    kept = torch.isfinite(Sampler(min_p=0.3).filter(logits[:1]))[0]
    assert kept.tolist() == [False, True, True, True]  # 0.3 of the best is kept (>=)
    assert torch.isfinite(Sampler(min_p=0.31).filter(logits[:1]))[0].tolist() == [
        False, True, False, True
    ]  # fmt: skip
    assert set(Sampler(min_p=0.5).draw(logits, gen()).tolist()) == {1, 3}
    assert set(Sampler(min_p=1.0).draw(logits, gen()).tolist()) == {1}  # the best is always kept
    # after the temperature, as the other filters: at T = 0.5 the ratios are squared
    hot = Sampler(min_p=0.3, temperature=0.5).filter(logits[:1])
    assert torch.isfinite(hot)[0].tolist() == [False, True, False, True]  # 0.09 < 0.3 <= 0.36


class AgainstShuffled(Sampler):
    """A guidance rule as a subclass: also away from the caption with its tokens reversed."""

    def conditions(self, text):
        return torch.cat([text, torch.zeros_like(text), text.flip(1)])

    def combine(self, logits, batch):
        c, u, n = logits.float().split(batch)
        return u + self.cond_scale * (c - u) + 2.0 * (c - n)


def test_a_guidance_rule_is_a_subclass(model, text):
    rule = AgainstShuffled(cond_scale=2.0)
    cached = rule.sample(model, text, generator=gen(4))
    assert torch.equal(cached, rule.sample(model, text, generator=gen(4), use_cache=False))
    assert not torch.equal(cached, Sampler(cond_scale=2.0).sample(model, text, generator=gen(4)))
    # by hand: the first code drawn from the mix of three full passes
    o, empty = CFG.text_vocab_total, torch.zeros(3, 0, dtype=torch.long)
    c, u, n = (model(t, empty)[:, -1, o:] for t in (text, torch.zeros_like(text), text.flip(1)))
    mixed = u + 2.0 * (c - u) + 2.0 * (c - n)
    torch.testing.assert_close(rule.combine(torch.cat([c, u, n]), 3), mixed)
    first = Sampler().draw(mixed, gen(4))
    assert torch.equal(cached[:, 0], first)


def test_describe_names_every_setting():
    line = Sampler(temperature=0.5, top_k=8, cond_scale=2.0).describe()
    assert (
        line
        == "temperature 0.5, top-k 8, top-p off, min-p off, typical-p off, guidance 2, rerank off"
    )


def test_typical_p_keeps_the_codes_nearest_the_entropy():
    probs = [0.5, 0.3, 0.15, 0.05]
    entropy = -sum(p * math.log(p) for p in probs)  # 1.142 nats
    nearest = sorted(range(4), key=lambda i: abs(-math.log(probs[i]) - entropy))
    assert nearest == [1, 0, 2, 3]  # the 0.3 code is the most typical, not the likeliest
    logits = torch.tensor(probs).log().expand(4000, 4)
    for mass, kept in [(0.2, {1}), (0.5, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})]:
        got = torch.isfinite(Sampler(typical_p=mass).filter(logits[:1]))[0].nonzero().flatten()
        assert set(got.tolist()) == kept, mass
        assert set(Sampler(typical_p=mass).draw(logits, gen()).tolist()) == kept
    after_top_k = Sampler(top_k=2, typical_p=0.5).filter(logits[:1])  # on what top-k left
    assert torch.isfinite(after_top_k)[0].tolist() == [True, False, False, False]
