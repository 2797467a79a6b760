"""Discrete VAE: shape contracts, objective against hand computations, schedules, training
improves reconstructions, save/load round trip, and clear errors on bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dalle.config import VAE_PRESETS, VAEConfig
from dalle.data.shapes import ShapesDataset, collate
from dalle.eval.reconstruction import codebook_stats, psnr
from dalle.models.vae import DiscreteVAE, gumbel_softmax, map_pixels, unmap_pixels
from dalle.train.schedules import cosine_ramp, lr_factor
from dalle.train.train_config import VAETrainConfig
from dalle.train.vae_trainer import VAEObjective, kl_to_uniform, logit_laplace_nll

TINY = VAEConfig(image_size=32, downsample=4, vocab_size=32, n_hid=8, n_init=16)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return collate([ShapesDataset("train", 16, seed=3)[i] for i in range(16)])["image"]


def test_shape_contracts():
    vae = DiscreteVAE(TINY)
    x = torch.rand(3, 3, 32, 32)
    out = vae(x, tau=1.0)
    assert out["logits"].shape == (3, 32, 8, 8)
    assert out["stats"].shape == (3, 6, 32, 32)
    codes = vae.encode(x)
    assert codes.shape == (3, 64) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 32
    y = vae.decode(codes)
    assert y.shape == (3, 3, 32, 32) and y.min() >= 0 and y.max() <= 1


def test_encode_is_row_major_argmax():
    vae = DiscreteVAE(TINY)
    x = torch.rand(2, 3, 32, 32)
    logits = vae.logits(x)  # (B, K, h, w)
    expected = torch.stack(
        [logits[b].argmax(0)[r, c] for b in range(2) for r in range(8) for c in range(8)]
    )
    assert torch.equal(vae.encode(x).flatten(), expected)


def test_decode_by_lookup_equals_one_hot_decoder():
    vae = DiscreteVAE(TINY)
    codes = torch.randint(0, 32, (2, 64))
    one_hot = F.one_hot(codes.view(2, 8, 8), 32).permute(0, 3, 1, 2).float()
    expected = vae.reconstruction(vae.decoder(one_hot))
    torch.testing.assert_close(vae.decode(codes), expected, atol=1e-6, rtol=1e-5)


def test_relaxed_decoder_path_equals_conv_path():
    vae = DiscreteVAE(TINY)
    soft = torch.softmax(torch.randn(2, 8, 8, 32), dim=-1)  # (B, h, w, K)
    expected = vae.decoder(soft.permute(0, 3, 1, 2).contiguous())  # OpenAI's 1x1-conv route
    torch.testing.assert_close(vae.decoder.forward_soft(soft), expected, atol=1e-5, rtol=1e-4)


def test_gumbel_samples_follow_the_softmax():
    """Hard samples are one-hot at argmax(logits + gumbel): the gumbel-max trick, so code
    frequencies match softmax(logits); gradients flow through the relaxed sample."""
    probs = torch.tensor([0.05, 0.15, 0.3, 0.5])
    logits = probs.log().expand(40_000, 4).clone().requires_grad_()
    sample = gumbel_softmax(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(sample.detach().argmax(-1), 4).float()
    torch.testing.assert_close(sample.detach(), one_hot, atol=1e-6, rtol=0)  # + rounding of ST
    torch.testing.assert_close(sample.detach().mean(0), probs, atol=0.01, rtol=0)
    (sample * torch.arange(4.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    soft = gumbel_softmax(logits.detach(), tau=1.0, generator=torch.Generator().manual_seed(0))
    assert soft.min() > 0 and torch.allclose(soft.sum(-1), torch.ones(40_000))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 3, 64, 64), r"shape \(B, 3, 32, 32\)"),
        (torch.rand(3, 32, 32), r"shape \(B, 3, 32, 32\)"),
        (torch.randint(0, 255, (2, 3, 32, 32)), "float images"),
    ],
)
def test_encode_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVAE(TINY).encode(bad)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 63, dtype=torch.long), r"shape \(B, 64\)"),
        (torch.zeros(2, 64), "integer codes"),
        (torch.full((2, 64), 32), r"codes in \[0, 32\)"),
        (torch.full((2, 64), -1), r"codes in \[0, 32\)"),
    ],
)
def test_decode_rejects_bad_codes(bad, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVAE(TINY).decode(bad)


@pytest.mark.parametrize(
    "kwargs", [{"downsample": 3}, {"image_size": 30}, {"vocab_size": 1}, {"n_hid": 6}]
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, **kwargs)


def test_paper_preset_matches_openai_parameter_counts():
    with torch.device("meta"):
        vae = DiscreteVAE(VAE_PRESETS["paper"])
    assert sum(p.numel() for p in vae.encoder.parameters()) == 53_786_240
    assert sum(p.numel() for p in vae.decoder.parameters()) == 43_829_766
    assert VAE_PRESETS["paper"].grid_size == 32


def test_map_unmap_pixels():
    x = torch.linspace(0, 1, 11)
    assert torch.allclose(map_pixels(x)[[0, -1]], torch.tensor([0.1, 0.9]))
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)


def test_logit_laplace_nll_matches_hand_computation():
    image = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2)
    mu = torch.tensor([0.3, -0.2, 1.0, 0.0]).view(1, 1, 2, 2)
    log_b = torch.tensor([0.0, -1.0, 0.5, 0.2]).view(1, 1, 2, 2)
    got = logit_laplace_nll(torch.cat([mu, log_b], 1), image).flatten()
    for i, (p, m, lb) in enumerate(
        zip([0.0, 0.5, 1.0, 0.25], [0.3, -0.2, 1.0, 0.0], [0.0, -1.0, 0.5, 0.2], strict=True)
    ):
        x = 0.8 * p + 0.1
        b = math.exp(lb)
        density = 1 / (2 * b * x * (1 - x)) * math.exp(-abs(math.log(x / (1 - x)) - m) / b)
        assert got[i].item() == pytest.approx(-math.log(density), rel=1e-5)


def test_kl_to_uniform_matches_hand_computation():
    logits = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    q = torch.softmax(torch.tensor([2.0, 0.0, -1.0]), 0)
    expected = sum(qi * math.log(qi * 3) for qi in q.tolist())
    assert kl_to_uniform(logits).item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_uniform(torch.zeros(1, 5, 2, 2)).abs().max() < 1e-6


def test_schedules_at_endpoints():
    cfg = VAETrainConfig(steps=100, kl_warmup_steps=40, kl_weight=6.6, warm_start=0.0)
    objective = VAEObjective(cfg)
    assert objective.tau(0) == pytest.approx(1.0)
    assert objective.tau(100) == pytest.approx(1 / 16)
    assert objective.tau(50) == pytest.approx((1 + 1 / 16) / 2)
    assert objective.beta(0) == pytest.approx(0.0)
    assert objective.beta(40) == pytest.approx(6.6) and objective.beta(1000) == pytest.approx(6.6)
    assert cosine_ramp(5, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_objective_is_normalised_per_subpixel(images):
    torch.manual_seed(0)
    cfg = VAETrainConfig(
        steps=10,
        kl_warmup_steps=1,
        kl_weight=2.0,
        usage_weight=0.0,
        recon="logit_laplace",
        warm_start=0.0,
    )
    vae = DiscreteVAE(dataclasses.replace(TINY, image_size=64))
    g = torch.Generator().manual_seed(0)
    loss, metrics = VAEObjective(cfg, g)(vae, images, step=5)
    out = vae(images, tau=VAEObjective(cfg).tau(5), generator=torch.Generator().manual_seed(0))
    recon = logit_laplace_nll(out["stats"], images).sum()
    kl = kl_to_uniform(out["logits"]).sum()
    assert loss.item() == pytest.approx(((recon + 2.0 * kl) / images.numel()).item(), rel=1e-5)
    assert metrics["beta"] == 2.0
    used = vae.logits(images).argmax(dim=1).unique().numel()
    assert metrics["batch_usage"] == pytest.approx(used / 32)
    mse_cfg = dataclasses.replace(cfg, recon="mse", kl_weight=0.0)
    loss, _ = VAEObjective(mse_cfg, torch.Generator().manual_seed(0))(vae, images, step=5)
    out = vae(images, tau=VAEObjective(cfg).tau(5), generator=torch.Generator().manual_seed(0))
    mse = ((torch.sigmoid(out["stats"][:, :3]) - map_pixels(images)) ** 2).mean()
    assert loss.item() == pytest.approx(mse.item(), rel=1e-5)


def test_batch_usage_kl_matches_hand_computation():
    from dalle.train.vae_trainer import batch_usage_kl

    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).t().reshape(1, 2, 1, 2)  # q: 1/2, 3/4
    mean_q = [(0.5 + 0.75) / 2, (0.5 + 0.25) / 2]
    expected = sum(q * math.log(q * 2) for q in mean_q)
    assert batch_usage_kl(logits).item() == pytest.approx(expected, rel=1e-5)


def test_data_dependent_logit_init_spreads_codes(images):
    from dalle.train.kmeans import init_codebook_logits

    torch.manual_seed(0)
    vae = DiscreteVAE(dataclasses.replace(TINY, image_size=64, vocab_size=64))
    before = vae.encode(images).unique().numel()
    init_codebook_logits(vae, images, spread=15.0, generator=torch.Generator().manual_seed(0))
    after = vae.encode(images).unique().numel()
    assert after > max(before, 20), (before, after)
    assert vae.logits(images).std(dim=1).mean().item() == pytest.approx(15.0, rel=0.05)


def test_codebook_stats():
    stats = codebook_stats(torch.tensor([0, 1, 2, 3]), 8)
    assert stats["codebook_usage"] == 0.5 and stats["perplexity"] == pytest.approx(4.0)
    assert codebook_stats(torch.zeros(10, dtype=torch.long), 4)["perplexity"] == pytest.approx(1.0)
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0)


def test_training_a_few_steps_improves_reconstruction(images, tmp_path):
    from dalle.train.vae_trainer import fit_vae

    torch.manual_seed(0)
    vae = DiscreteVAE(dataclasses.replace(TINY, image_size=64, vocab_size=64))
    before = psnr(vae.decode(vae.encode(images)), images)
    cfg = VAETrainConfig(
        steps=60, batch_size=16, lr=3e-3, warmup_steps=5, kl_warmup_steps=30, warm_start=0.0
    )
    fit_vae(
        vae, cfg, iter(lambda: images, None), tmp_path, images[:4], save_every=30, progress=False
    )
    after = psnr(vae.decode(vae.encode(images)), images)
    assert after > before + 3, (before, after)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "recon_000060.png").is_file()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 6


def test_image_patches_are_raster_order_blocks():
    from dalle.train.kmeans import image_patches

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    p = image_patches(x, 4)  # (2 * 2 * 2, 3 * 16)
    assert p.shape == (8, 48)
    # patch 3 = image 0, grid row 1, column 1: pixels [4:8, 4:8] of every channel
    assert torch.equal(p[3], x[0, :, 4:8, 4:8].reshape(-1))
    assert torch.equal(p[5], x[1, :, 0:4, 4:8].reshape(-1))


def test_kmeans_finds_separated_clusters():
    from dalle.train.kmeans import kmeans

    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in truth])
    found = kmeans(points, 3, iters=20, generator=torch.Generator().manual_seed(1))
    nearest = torch.cdist(truth, found).min(dim=1).values
    assert (nearest < 0.1).all(), found
    with pytest.raises(ValueError, match="at least k=5 points"):
        kmeans(points[:4], 5, iters=1)


def test_warm_start_codes_are_nearest_patch_centres(images):
    from dalle.train.kmeans import image_patches, patch_codebook
    from dalle.train.vae_trainer import PatchCodeObjective

    vae = DiscreteVAE(dataclasses.replace(TINY, image_size=64))
    cfg = VAETrainConfig(steps=10, kmeans_iters=5)
    centres = patch_codebook(images, cfg, vae, torch.Generator().manual_seed(0))
    assert centres.shape == (32, 3 * 4 * 4)
    objective = PatchCodeObjective(cfg, centres)
    codes = objective.codes(vae, images)  # (B, 16, 16)
    patches = image_patches(images, 4)
    by_hand = ((patches[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(codes.flatten(), by_hand)
    loss, metrics = objective(vae, images, 0)
    assert loss.requires_grad and {"recon", "code_ce", "psnr"} <= set(metrics)


def test_warm_start_then_elbo_trains_and_numbers_steps_once(images, tmp_path):
    import json

    from dalle.train.vae_trainer import fit_vae

    torch.manual_seed(0)
    vae = DiscreteVAE(dataclasses.replace(TINY, image_size=64, vocab_size=64))
    before = psnr(vae.decode(vae.encode(images)), images)
    cfg = VAETrainConfig(
        steps=50, warm_start=0.8, batch_size=16, lr=3e-3, warmup_steps=5, kmeans_images=16
    )
    fit_vae(
        vae, cfg, iter(lambda: images, None), tmp_path, images[:4], save_every=25, progress=False
    )
    after = psnr(vae.decode(vae.encode(images)), images)
    assert after > before + 3, (before, after)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 51, 10))  # one numbering across both phases
    assert (tmp_path / "recon_000025.png").is_file() and (tmp_path / "recon_000050.png").is_file()
    assert VAEObjective(cfg).tau(10) == pytest.approx(1 / 16)  # annealed over the ELBO phase


def test_save_load_round_trip_is_bit_exact(tmp_path):
    vae = DiscreteVAE(TINY)
    vae.save(tmp_path / "vae")
    loaded = DiscreteVAE.load(tmp_path / "vae")
    assert loaded.cfg == TINY
    for (k, a), (k2, b) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(vae.encode(x), loaded.encode(x))


def test_load_rejects_corrupt_and_mismatched_weights(tmp_path):
    vae = DiscreteVAE(TINY)
    vae.save(tmp_path / "a")
    weights = tmp_path / "a" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        DiscreteVAE.load(tmp_path / "a")
    DiscreteVAE(dataclasses.replace(TINY, vocab_size=64)).save(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(ValueError, match="shape"):
        DiscreteVAE.load(tmp_path / "b")
    with pytest.raises(ValueError, match="does not exist"):
        DiscreteVAE.load(tmp_path / "missing")
    (tmp_path / "a" / "config.json").write_text('{"image_size": 32, "bogus": 1}')
    with pytest.raises(ValueError, match="unknown field"):
        DiscreteVAE.load(tmp_path / "a")


def test_saved_config_values_are_type_checked():
    from dalle.config import from_dict, to_dict

    data = to_dict(TINY)
    assert from_dict(VAEConfig, data) == TINY
    for name, bad in (("palette", "8"), ("n_hid", 8.0), ("vocab_size", True)):
        with pytest.raises(ValueError, match=f"field '{name}' must be int"):
            from_dict(VAEConfig, {**data, name: bad})
