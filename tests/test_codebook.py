"""Product (gain-shape) codebooks: the factorised logits and embeddings against hand
computations, the dVAE's pattern stack is colour-blind and its decoder paints any colour on
any pattern, the k-means product codebook recovers the spec's palette, and the transformer's
factorised image head keeps cached and uncached logits equal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dalle.config import TransformerConfig, VAEConfig
from dalle.data.shapes import ShapesDataset, collate
from dalle.models.codebook import code_marginals, product_logits
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.train.train_config import VAETrainConfig

PRODUCT = VAEConfig(image_size=32, downsample=4, vocab_size=24, n_hid=8, n_init=16, palette=3)
# The spec's colours (SHAPES.md), written out here as an independent reference.
SPEC_COLOURS = torch.tensor(
    [[255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
     [255, 140, 0], [255, 255, 255]], dtype=torch.float32,
) / 255  # fmt: skip


def test_product_logits_softmax_is_the_product_of_factor_softmaxes():
    g = torch.Generator().manual_seed(0)
    factors = torch.randn(5, 4 + 3, generator=g)  # 4 patterns, 3 colours
    logits = product_logits(factors, 3)  # (5, 12)
    for p in range(4):
        for c in range(3):
            assert torch.allclose(logits[:, p * 3 + c], factors[:, p] + factors[:, 4 + c])
    by_hand = F.softmax(factors[:, :4], -1)[:, :, None] * F.softmax(factors[:, 4:], -1)[:, None]
    torch.testing.assert_close(F.softmax(logits, -1), by_hand.flatten(1))


def test_code_marginals_split_a_one_hot_into_two():
    z = F.one_hot(torch.tensor([7, 0]), 12).float()  # code 7 = pattern 2, colour 1 (C = 3)
    pattern, colour = code_marginals(z, 3)
    assert pattern.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert colour.tolist() == [[0, 1, 0], [1, 0, 0]]


def test_config_rejects_a_palette_that_does_not_divide_the_codebook():
    with pytest.raises(ValueError, match="palette must be 0 or divide"):
        dataclasses.replace(PRODUCT, palette=5)
    with pytest.raises(ValueError, match="into >= 3 patterns"):  # empty, full and k-means ones
        dataclasses.replace(PRODUCT, vocab_size=8, palette=4)
    with pytest.raises(ValueError, match="image_palette must be 0 or divide"):
        TransformerConfig(image_vocab=12, image_palette=5)


def _square(colour: tuple[float, float, float]) -> torch.Tensor:
    x = torch.zeros(1, 3, 32, 32)
    x[0, :, 5:17, 9:20] = torch.tensor(colour)[:, None, None]
    return x


def test_pattern_stack_is_colour_blind():
    torch.manual_seed(0)
    vae = DiscreteVAE(PRODUCT)
    red, blue = vae.encode(_square((1, 0, 0))), vae.encode(_square((0, 0, 1)))
    assert torch.equal(red // 3, blue // 3)  # same patterns; only the colour factor may differ


def test_decoder_paints_the_code_colour_on_a_shared_brightness():
    torch.manual_seed(0)
    vae = DiscreteVAE(PRODUCT)
    with torch.no_grad():
        vae.decoder.palette.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]]))
    patterns = torch.randint(0, 8, (2, 64))
    red, blue, grey = (vae.decode(patterns * 3 + c) for c in range(3))
    torch.testing.assert_close(red[:, 0], blue[:, 2], atol=1e-5, rtol=0)
    assert red[:, 1:].abs().max() < 1e-5 and blue[:, :2].abs().max() < 1e-5
    torch.testing.assert_close(grey[:, 0], 0.5 * red[:, 0], atol=1e-5, rtol=0)
    # the relaxed path agrees with the lookup path
    one_hot = F.one_hot((patterns * 3 + 1).view(2, 8, 8), 24).float()
    torch.testing.assert_close(
        vae.decoder.forward_soft(one_hot), vae.decoder.forward_codes((patterns * 3 + 1).view(2, 8, 8))
    )


def test_kmeans_product_codebook_recovers_the_spec_palette():
    from dalle.train.kmeans import palette_of, patch_codebook

    images = collate([ShapesDataset("train", 256, seed=5)[i] for i in range(256)])["image"]
    cfg = dataclasses.replace(PRODUCT, image_size=64, vocab_size=8 * 32, palette=8)
    vae = DiscreteVAE(cfg)
    centres = patch_codebook(images, VAETrainConfig(kmeans_iters=10), vae, torch.Generator())
    assert centres.shape == (256, 3 * 16)
    palette = palette_of(centres, cfg)  # (8, 3)
    distance = torch.cdist(SPEC_COLOURS, palette).min(dim=1).values
    assert (distance < 2 / 255).all(), palette * 255
    patterns = centres.unflatten(0, (32, 8))
    assert patterns[0].abs().max() == 0  # pattern 0 is empty: black in every colour


def test_warm_start_trains_a_product_codebook(tmp_path):
    from dalle.eval.reconstruction import psnr
    from dalle.train.vae_trainer import fit_vae

    images = collate([ShapesDataset("train", 16, seed=3)[i] for i in range(16)])["image"]
    torch.manual_seed(0)
    vae = DiscreteVAE(dataclasses.replace(PRODUCT, image_size=64, vocab_size=64 * 8, palette=8))
    before = psnr(vae.decode(vae.encode(images)), images)
    cfg = VAETrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, kmeans_images=16)
    fit_vae(
        vae, cfg, iter(lambda: images, None), tmp_path, images[:4], save_every=40, progress=False
    )
    after = psnr(vae.decode(vae.encode(images)), images)
    assert after > before + 3, (before, after)
    again = DiscreteVAE.load(tmp_path / "model")
    assert torch.equal(again.encode(images), vae.eval().encode(images))


TINY_PRODUCT = TransformerConfig(
    text_vocab=20, text_len=4, image_vocab=12, image_grid=3, dim=32, depth=2, heads=4,
    attention=("full", "conv"), conv_kernel=3, image_palette=3,
)  # fmt: skip


def test_factorised_image_head_and_embedding():
    torch.manual_seed(0)
    model = DALLE(TINY_PRODUCT).eval()
    cfg = model.cfg
    assert model.image_emb.num_embeddings == 4 + 3 and model.head.out_features == 24 + 7
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 20, (2, 4), generator=g)
    image = torch.randint(0, 12, (2, 9), generator=g)
    logits = model(text, image)  # (B, L, V)
    assert logits.shape == (2, 4 + 9, cfg.vocab_total)
    h_logits = logits[:, cfg.text_len - 1 :, cfg.text_vocab_total :]
    # every code's logit is its pattern's plus its colour's: differences factor
    d = h_logits[..., 3 * 1 + 2] - h_logits[..., 3 * 1 + 0]
    torch.testing.assert_close(d, h_logits[..., 3 * 2 + 2] - h_logits[..., 3 * 2 + 0])
    # cached sampling sees the same logits
    cache = model.new_cache(2)
    steps = [model.prefill(text, cache)]
    steps += [model.step(image[:, i], cache, cfg.text_len + i) for i in range(cfg.image_len - 1)]
    torch.testing.assert_close(torch.stack(steps, 1), h_logits[:, :-1], atol=1e-5, rtol=0)


def test_pipeline_refuses_a_transformer_that_reads_the_codes_otherwise():
    from dalle.model_folder import check_compatible
    from dalle.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["a red circle", "a blue square"] * 8, vocab_size=300)
    vae = DiscreteVAE(PRODUCT)  # 8 patterns x 3 colours, a 8 x 8 grid
    cfg = dataclasses.replace(
        TINY_PRODUCT, text_vocab=tokenizer.vocab_size, image_vocab=24, image_grid=8
    )
    check_compatible(tokenizer, vae, DALLE(cfg))
    flat = DALLE(dataclasses.replace(cfg, image_palette=0))
    with pytest.raises(ValueError, match="8 patterns x 3 colours .* image_palette=0"):
        check_compatible(tokenizer, vae, flat)
