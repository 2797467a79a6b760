"""DALL-E transformer: masks against a loop-by-loop reference, the model's attention follows
its masks, cached and uncached logits agree, head restriction, per-position pads, the loss
against a hand computation, caption dropout, configs, save/load and clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

import pytest
import torch

from dalle.config import (
    TRANSFORMER_PRESETS,
    TransformerConfig,
    from_dict,
    load_config,
    paper_attention,
    to_dict,
)
from dalle.models.dalle_transformer import DALLE
from dalle.models.transformer import KVCache, Transformer, attention_mask
from dalle.train.transformer_trainer import caption_dropout, dalle_loss

KINDS = ("full", "row", "column", "conv")
TINY = TransformerConfig(
    text_vocab=20, text_len=4, image_vocab=12, image_grid=3, dim=32, depth=2, heads=4,
    attention=("row", "conv"), conv_kernel=3,
)  # fmt: skip


def model_for(**changes) -> DALLE:
    torch.manual_seed(0)
    return DALLE(dataclasses.replace(TINY, **changes)).eval()


def batch(cfg: TransformerConfig, b: int = 2, n: int | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, cfg.text_vocab, (b, cfg.text_len), generator=g)
    text[0, -1] = 0  # one padded caption
    n = cfg.image_len if n is None else n
    return text, torch.randint(0, cfg.image_vocab, (b, n), generator=g)


def reference_mask(kind: str, text_len: int, grid: int, k: int) -> torch.Tensor:
    """The mask semantics written out with plain loops."""
    T = text_len + grid * grid
    m = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for key in range(T):
            if q < text_len:
                m[q, key] = key <= q
                continue
            if key < text_len:
                m[q, key] = True
                continue
            r, c = divmod(q - text_len, grid)
            r2, c2 = divmod(key - text_len, grid)
            if kind == "full":
                ok = key <= q
            elif kind == "row":
                ok = r2 == r and c2 <= c
            elif kind == "column":
                ok = c2 == c and r2 <= r
            else:
                ok = r - (k - 1) <= r2 <= r and abs(c2 - c) <= k // 2 and key <= q
            m[q, key] = ok
    return m


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("text_len", "grid", "k"), [(3, 4, 3), (2, 5, 5), (1, 3, 1)])
def test_masks_match_loop_reference(kind, text_len, grid, k):
    mask = attention_mask(kind, text_len, grid, k)
    assert torch.equal(mask, reference_mask(kind, text_len, grid, k))
    T = text_len + grid * grid
    assert not (mask & ~torch.ones(T, T, dtype=torch.bool).tril()).any()  # never a future key
    assert mask.diagonal().all()


def test_attention_follows_mask():
    """One layer: hidden state q depends on input k exactly where the mask allows it."""
    for kind in KINDS:
        cfg = dataclasses.replace(TINY, depth=1, attention=(kind,))
        torch.manual_seed(0)
        tr = Transformer(cfg).eval()
        x = torch.randn(1, cfg.seq_len, cfg.dim, requires_grad=True)
        h = tr(x)
        w = torch.randn(cfg.dim)  # a LayerNorm output sums to a constant, so project it
        for q in range(cfg.seq_len):
            (grad,) = torch.autograd.grad(h[0, q] @ w, x, retain_graph=True)
            depends = grad[0].abs().sum(-1) > 0
            assert torch.equal(depends, tr.mask(kind)[q]), (kind, q)


@pytest.mark.parametrize(
    "attention", [(k, k) for k in KINDS] + [("row", "column"), ("full", "conv")]
)
def test_cached_logits_equal_full_forward(attention):
    model = model_for(attention=attention)
    cfg = model.cfg
    text, image = batch(cfg)
    full = model(text, image)  # (B, L, V)
    image_full = full[:, cfg.text_len - 1 :, cfg.text_vocab_total :]  # (B, n + 1, image_vocab)
    cache = model.new_cache(2)
    steps = [model.prefill(text, cache)]
    steps += [model.step(image[:, i], cache, cfg.text_len + i) for i in range(cfg.image_len - 1)]
    torch.testing.assert_close(torch.stack(steps, 1), image_full[:, :-1], atol=1e-5, rtol=0)
    # a prefill with an image prefix, reusing (rewinding) the same cache
    got = model.prefill(text, cache, image[:, :4])
    torch.testing.assert_close(got, image_full[:, 4], atol=1e-5, rtol=0)
    assert cache.pos == cfg.text_len + 4


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    model = model_for(attention=("full", "conv"), dropout=0.1)
    text, image = batch(model.cfg)
    model.train()
    results = []
    for checkpointing in (False, True):
        model.transformer.checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(3)  # the same dropout masks (checkpoint replays the RNG state)
        loss, _ = dalle_loss(model, text, image)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_config_saved_with_a_removed_option_loads_only_with_it_off(tmp_path):
    """A transformer/config.json written while ALiBi and the text encoder were options holds
    them off (``text_alibi`` false, ``text_depth`` 0): it loads as the model it was; one with
    an option on is a one-line error naming the file and the field."""
    saved = {**to_dict(TINY), "text_alibi": False, "text_depth": 0}
    assert from_dict(TransformerConfig, saved) == TINY
    path = tmp_path / "config.json"
    for field, on in [("text_alibi", True), ("text_depth", 2)]:
        path.write_text(json.dumps({**saved, field: on}))
        message = f"{path}: {field}={on} was an experimental option of TransformerConfig, since removed (see docs/experiments.md)"
        with pytest.raises(ValueError, match=re.escape(message)):
            load_config(TransformerConfig, path)
    del saved["dim"]  # every other field is still required
    with pytest.raises(ValueError, match=r"missing field\(s\) \['dim'\]"):
        from_dict(TransformerConfig, saved)


def test_transformer_chunks_with_cache():
    cfg = dataclasses.replace(TINY, attention=("column", "conv"))
    torch.manual_seed(0)
    tr = Transformer(cfg).eval()
    x = torch.randn(2, cfg.seq_len, cfg.dim)
    full = tr(x)
    cache = KVCache.create(cfg, 2)
    parts = [tr(x[:, a:b], cache, a) for a, b in [(0, 5), (5, 6), (6, 11), (11, cfg.seq_len)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    cache.reset()
    assert cache.pos == 0
    with pytest.raises(ValueError, match="start must be"):
        tr(x[:, :2], cache, 3)  # would skip positions


def test_head_restriction_and_partial_image():
    model = model_for()
    cfg = model.cfg
    text, image = batch(cfg, n=5)
    logits = model(text, image)
    assert logits.shape == (2, cfg.text_len + 5, cfg.vocab_total)
    o, t = cfg.text_vocab_total, cfg.text_len
    assert torch.isinf(logits[:, : t - 1, o:]).all() and (logits[:, : t - 1, o:] < 0).all()
    assert torch.isfinite(logits[:, : t - 1, :o]).all()
    assert torch.isinf(logits[:, t - 1 :, :o]).all()
    assert torch.isfinite(logits[:, t - 1 :, o:]).all()
    empty = model(text, image[:, :0])
    assert empty.shape == (2, t, cfg.vocab_total)


def test_pads_are_per_position_tokens():
    model = model_for()
    cfg = model.cfg
    text = torch.tensor([[5, 7, 0, 0], [5, 7, 3, 0]])
    ids = model.text_tokens(text)
    assert ids.tolist() == [[5, 7, 20 + 2, 20 + 3], [5, 7, 3, 20 + 3]]
    _, image = batch(cfg, n=3)
    before = model(text, image)
    with torch.no_grad():
        model.text_emb.weight[0] += 1.0  # the tokenizer's pad id is never embedded as such
    torch.testing.assert_close(model(text, image), before, atol=0, rtol=0)
    with torch.no_grad():
        model.text_emb.weight[cfg.text_vocab + 2] += 1.0  # only captions padded at position 2
    after = model(text, image)
    assert not torch.allclose(after[0], before[0])
    torch.testing.assert_close(after[1], before[1], atol=0, rtol=0)


@pytest.mark.parametrize("palette", [0, 3])  # flat codes, and 4 patterns x 3 colours
def test_loss_matches_hand_computation(palette):
    model = model_for(image_palette=palette)
    cfg = model.cfg
    text, image = batch(cfg, n=6)
    loss, metrics = dalle_loss(model, text, image, text_weight=0.3, image_weight=0.6)
    logits = model(text, image[:, :-1]).double()
    m = logits.max(-1, keepdim=True).values
    log_p = logits - m - (logits - m).exp().sum(-1, keepdim=True).log()  # log_softmax by hand
    t, o = cfg.text_len, cfg.text_vocab_total
    text_nll, image_nll = [], []
    for b in range(2):
        for j in range(1, t):
            target = text[b, j].item() or cfg.text_vocab + j  # pads as per-position ids
            text_nll.append(-log_p[b, j - 1, target])
        for i in range(6):
            image_nll.append(-log_p[b, t - 1 + i, o + image[b, i]])
    text_loss = torch.stack(text_nll).mean()
    image_loss = torch.stack(image_nll).mean()
    assert math.isclose(metrics["text_loss"], text_loss.item(), rel_tol=1e-5)
    assert math.isclose(metrics["image_loss"], image_loss.item(), rel_tol=1e-5)
    assert math.isclose(loss.item(), 0.3 * text_loss.item() + 0.6 * image_loss.item(), rel_tol=1e-5)
    loss.backward()
    assert model.head.weight.grad is not None


def test_dropped_colours_are_their_places_only_and_stay_targets():
    """Colour dropout leaves a product code's colour factor out of its embedding: the same as
    zeroing the colour rows of the table for every code; positions before the first dropped
    code are untouched (causal), and the objective's image loss is the NLL of every code,
    dropped ones included, under the masked input drawn from its generator."""
    from dalle.train.train_config import TransformerTrainConfig
    from dalle.train.transformer_trainer import DalleObjective

    palette = 3  # 4 patterns x 3 colours
    model = model_for(image_palette=palette)
    cfg = model.cfg
    text, image = batch(cfg, n=6)
    codes = image[:, :-1]
    every = torch.ones(codes.shape, dtype=torch.bool)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.image_emb.weight[cfg.image_vocab // palette :] = 0.0  # the colour rows
    torch.testing.assert_close(model.hidden(text, codes, every), zeroed.hidden(text, codes))
    one = torch.zeros_like(every)
    one[:, 2] = True  # the third code: the input at position text_len + 2
    h, plain = model.hidden(text, codes, one), model.hidden(text, codes)
    t = cfg.text_len
    torch.testing.assert_close(h[:, : t + 2], plain[:, : t + 2])
    assert not torch.allclose(h[:, t + 2], plain[:, t + 2])

    recipe = TransformerTrainConfig(caption_dropout=0.0, colour_dropout=0.5)
    _, metrics = DalleObjective(recipe, torch.Generator().manual_seed(5))(model, (text, image), 0)
    mask = torch.rand(codes.shape, generator=torch.Generator().manual_seed(5)) < 0.5  # same draw
    assert mask.any() and not mask.all()
    h = model.hidden(text, codes, mask)
    log_p = torch.log_softmax(model.image_logits(h[:, cfg.text_len - 1 :]).double(), -1)
    nll = -log_p.gather(-1, image[..., None]).mean()
    assert math.isclose(metrics["image_loss"], nll.item(), rel_tol=1e-5)
    _, plain_metrics = dalle_loss(model, text, image)
    assert not math.isclose(metrics["image_loss"], plain_metrics["image_loss"], rel_tol=1e-4)


def test_colour_dropout_needs_a_product_codebook():
    model = model_for(image_palette=0)
    text, image = batch(model.cfg, n=4)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="colour dropout needs a product codebook"):
        dalle_loss(model, text, image, drop_colours=mask)
    with pytest.raises(ValueError, match=r"boolean code mask of shape \(2, 3\)"):
        dalle_loss(model, text, image, drop_colours=mask[:, :2])


def test_caption_dropout():
    text = torch.randint(1, 20, (64, 4))
    kept = text.clone()
    out = caption_dropout(text, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(text, kept)  # input untouched
    dropped = (out == 0).all(1)
    assert torch.equal(out[~dropped], text[~dropped]) and 10 < dropped.sum() < 54
    again = caption_dropout(text, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(caption_dropout(text, 0.0), text)
    assert (caption_dropout(text, 1.0) == 0).all()
    with pytest.raises(ValueError, match="p must be"):
        caption_dropout(text, 1.5)


def test_config_validation_and_json_round_trip():
    assert TINY.image_len == 9 and TINY.seq_len == 13
    assert TINY.text_vocab_total == 24 and TINY.vocab_total == 36
    assert TransformerConfig(depth=6).attention == ("row", "column", "row", "row", "row", "conv")
    assert paper_attention(1) == ("conv",)
    data = to_dict(TINY)
    data["attention"] = list(data["attention"])  # as JSON brings it back
    assert from_dict(TransformerConfig, data) == TINY
    for bad, match in [
        (dict(dim=30), "multiple of heads"),
        (dict(attention=("row",)), "one mask per layer"),
        (dict(attention=("row", "diagonal")), "attention kinds"),
        (dict(conv_kernel=4), "odd"),
        (dict(text_len=1), "text_len"),
        (dict(dropout=1.0), "dropout"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(TINY, **bad)


def test_bad_inputs_raise():
    model = model_for()
    text, image = batch(TINY, n=3)
    cases = [
        (lambda: model(text[:, :3], image), r"text of shape \(B, 4\)"),
        (lambda: model(text.float(), image), "integer text"),
        (lambda: model(text + 20, image), r"text ids in \[0, 20\)"),
        (lambda: model(text, image + 12), r"image ids in \[0, 12\)"),
        (lambda: model(text, torch.zeros(2, 10, dtype=torch.long)), "n <= 9"),
        (lambda: model(text, image[:1]), r"shape \(2, n <= 9\)"),
        (lambda: model.prefill(text, model.new_cache(3)), "cache of"),
        (lambda: attention_mask("diagonal", 2, 3), "attention kind"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_save_load_round_trip(tmp_path):
    model = model_for()
    model.save(tmp_path / "transformer")
    loaded = DALLE.load(tmp_path / "transformer")
    assert loaded.cfg == model.cfg
    text, image = batch(TINY, n=4)
    torch.testing.assert_close(loaded(text, image), model(text, image), atol=0, rtol=0)
    names = set(model.state_dict())
    assert "transformer.layers.1.attn.qkv.weight" in names and "row_emb.weight" in names
    assert not any("mask" in n for n in names)


def expected_params(cfg: TransformerConfig) -> int:
    d, m = cfg.dim, cfg.mlp_ratio
    embeddings = (cfg.text_vocab_total + cfg.text_len + cfg.image_vocab + 2 * cfg.image_grid) * d
    block = (4 + 2 * m) * d * d + (9 + m) * d  # qkv, proj, fc, proj weights; biases; two norms
    return embeddings + cfg.depth * block + 2 * d + (d + 1) * cfg.vocab_total


def test_paper_preset_has_12b_parameters_on_meta():
    cfg = TRANSFORMER_PRESETS["paper"]
    assert (
        cfg.attention[:5] == ("row", "column", "row", "row", "row") and cfg.attention[-1] == "conv"
    )
    assert cfg.head_dim == 64
    with torch.device("meta"):
        model = DALLE(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_params(cfg)
    assert 11.5e9 < count < 12.5e9
    assert sum(p.numel() for p in model_for().parameters()) == expected_params(TINY)
