"""CLIP: the loss against a hand computation, the towers' contracts, the shapes positives,
reranking in the pipeline and the train-clip / eval clip / generate --rerank commands."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dalle.cli import main
from dalle.config import CLIPConfig, TransformerConfig, VAEConfig
from dalle.data.shapes import ShapeObject, make_sample
from dalle.data.shapes_captions import positives as shapes_positives
from dalle.models.clip import CLIP, caption_positives
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.sampler import Sampler
from dalle.tokenizer import Tokenizer
from dalle.train.clip_trainer import clip_loss
from dalle.train.train_config import CLIPTrainConfig

TINY = CLIPConfig(
    text_vocab=300, text_len=8, text_dim=32, text_depth=1, text_heads=2,
    conv_widths=(8, 8, 16, 16), image_dim=32, image_depth=1, image_heads=2, embed_dim=16,
)  # fmt: skip


def _hand_loss(t: list[list[float]], i: list[list[float]], scale: float, pos: list[list[int]]):
    """The symmetric soft-target InfoNCE written out with plain floats."""
    n = len(t)
    logits = [
        [scale * sum(a * b for a, b in zip(t[r], i[c], strict=True)) for c in range(n)]
        for r in range(n)
    ]

    def row_loss(values: list[float], targets: list[int]) -> float:
        lse = math.log(sum(math.exp(v) for v in values))
        k = sum(targets)
        return -sum(tg / k * (v - lse) for v, tg in zip(values, targets, strict=True))

    rows = [row_loss(logits[r], pos[r]) for r in range(n)]
    cols = [
        row_loss([logits[r][c] for r in range(n)], [pos[r][c] for r in range(n)]) for c in range(n)
    ]
    return (sum(rows) / n + sum(cols) / n) / 2


@pytest.mark.parametrize(
    "pos", [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 1, 0], [0, 1, 0], [1, 0, 1]]]
)
def test_clip_loss_matches_hand_computation_on_3x3(pos):
    t = [[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]
    i = [[0.8, 0.6], [0.0, 1.0], [-0.6, -0.8]]
    got = clip_loss(torch.tensor(t), torch.tensor(i), 2.5, torch.tensor(pos, dtype=torch.bool))
    assert got.item() == pytest.approx(_hand_loss(t, i, 2.5, pos), rel=1e-6)


def test_clip_loss_with_identity_is_standard_clip():
    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    logits = 3.0 * t @ i.T
    labels = torch.arange(5)
    expected = (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.T, labels)
    ) / 2
    assert clip_loss(t, i, 3.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_clip_loss_rejects_bad_positives():
    t = torch.randn(3, 2)
    with pytest.raises(ValueError, match="true diagonal"):
        clip_loss(t, t, 1.0, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        clip_loss(t, torch.randn(2, 2), 1.0)


def test_shapes_positives_follow_the_caption_rule():
    red_big = ShapeObject("circle", "red", "large", 0, 0, 11, 11)
    red_small = ShapeObject("circle", "red", "small", 2, 2, 53, 53)
    blue = ShapeObject("square", "blue", "small", 1, 1, 32, 32)
    captions = [
        "a red circle",
        "a large red circle in the top left",
        "a blue square and a red circle",
    ]
    scenes = [(red_small,), (red_big,), (blue, red_big)]
    got = shapes_positives(captions, scenes)
    # "a red circle" fits both one-circle scenes; the full caption only its own; the pair only
    # the two-object scene.
    assert got.tolist() == [[True, True, False], [False, True, False], [False, False, True]]


def test_caption_positives_compare_normalised_text():
    tok = Tokenizer.train(["a red circle", "a blue square"], vocab_size=300)
    got = caption_positives(["a red circle", "A  Red circle", "a blue square"], tok)
    assert got.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


@pytest.mark.parametrize("tower", ["conv", "vit"])
def test_encoders_shape_contract(tower):
    torch.manual_seed(0)
    clip = CLIP(dataclasses.replace(TINY, image_tower=tower)).eval()
    text = torch.randint(1, 300, (3, 8))
    text[0, 4:] = 0
    images = torch.rand(2, 3, 64, 64)
    t, i = clip.encode_text(text), clip.encode_image(images)
    assert t.shape == (3, 16) and i.shape == (2, 16)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3)) and torch.allclose(
        i.norm(dim=-1), torch.ones(2)
    )
    assert torch.allclose(clip.similarity(text, images), t @ i.T)
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        clip.encode_text(text[:, :5])
    with pytest.raises(ValueError, match=r"text ids in \[0, 300\)"):
        clip.encode_text(torch.full((1, 8), 300))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        clip.encode_image(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float images"):
        clip.encode_image(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_text_tower_pools_the_last_real_token():
    """Causal attention and end-of-text pooling: positions after the caption never matter."""
    torch.manual_seed(0)
    clip = CLIP(TINY).eval()
    text = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])
    before = clip.encode_text(text)
    with torch.no_grad():
        clip.text.pos_emb.weight[3:] += torch.randn(5, 32)
    assert torch.allclose(clip.encode_text(text), before, atol=1e-6)
    with torch.no_grad():
        clip.text.pos_emb.weight[2] += torch.randn(32)
    assert not torch.allclose(clip.encode_text(text), before, atol=1e-3)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    clip = CLIP(TINY)
    clip.save(tmp_path / "clip")
    again = CLIP.load(tmp_path / "clip")
    text, images = torch.randint(0, 300, (2, 8)), torch.rand(2, 3, 64, 64)
    assert torch.equal(clip.eval().similarity(text, images), again.similarity(text, images))


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    """An untrained pipeline folder (tokenizer, tiny dVAE, tiny transformer), no clip/."""
    root = tmp_path_factory.mktemp("clip-pipe")
    torch.manual_seed(0)
    tok = Tokenizer.train([make_sample(0, "train", i).caption for i in range(200)], 300)
    vae = DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8))
    cfg = TransformerConfig(text_vocab=tok.vocab_size, text_len=8, image_vocab=16, image_grid=4,
                            dim=32, depth=1, heads=2, attention=("full",))  # fmt: skip
    DallePipeline(tok, vae, DALLE(cfg)).save_pretrained(root / "model")
    return root / "model"


def test_rerank_keeps_the_best_candidates_in_order(pipeline_dir):
    pipe = DallePipeline.from_pretrained(pipeline_dir)
    torch.manual_seed(1)
    pipe.clip = CLIP(dataclasses.replace(TINY, text_vocab=pipe.tokenizer.vocab_size)).eval()
    prompts = ["a red circle", "a blue square at the top"]
    out = pipe(prompts, num_images=2, seed=5, rerank=3)
    assert len(out.images) == 4 and out.prompts == [prompts[0]] * 2 + [prompts[1]] * 2
    # Independently: draw the same 6 candidates per prompt, score them all, keep the top two.
    codes = pipe.generate_codes(prompts, 6, seed=5)
    scores = pipe.score([p for p in prompts for _ in range(6)], pipe.decode(codes)).view(2, 6)
    best = scores.sort(dim=1, descending=True)
    assert out.scores == pytest.approx(best.values[:, :2].flatten().tolist(), abs=1e-6)
    for n, image in enumerate(out.images):
        p, k = divmod(n, 2)
        want = pipe.decode(codes[p * 6 + best.indices[p, k]][None])[0]
        got = torch.from_numpy(np.asarray(image)).permute(2, 0, 1) / 255
        assert (got - want).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="rerank must be an integer >= 1"):
        pipe(prompts, rerank=0)


def test_a_saved_rerank_default_applies_and_an_override_turns_it_off(pipeline_dir):
    """A folder whose generation.json reranks (as the demo's may) reranks every call that does
    not say otherwise, exactly as ``rerank=N`` would; ``rerank=None`` draws plainly."""
    pipe = DallePipeline.from_pretrained(pipeline_dir)
    torch.manual_seed(1)
    pipe.clip = CLIP(dataclasses.replace(TINY, text_vocab=pipe.tokenizer.vocab_size)).eval()
    prompts = ["a red circle", "a blue square at the top"]
    asked = pipe(prompts, num_images=2, seed=5, rerank=3)
    plain = pipe(prompts, num_images=2, seed=5)
    pipe.sampler = Sampler(rerank=3)
    saved = pipe(prompts, num_images=2, seed=5)
    assert saved.scores == asked.scores and plain.scores is None
    assert [x.tobytes() for x in saved.images] == [x.tobytes() for x in asked.images]
    off = pipe(prompts, num_images=2, seed=5, rerank=None)
    assert off.scores is None
    assert [x.tobytes() for x in off.images] == [x.tobytes() for x in plain.images]


def test_a_variation_is_reranked_by_similarity_to_its_source(pipeline_dir):
    pipe = DallePipeline.from_pretrained(pipeline_dir)
    torch.manual_seed(1)
    pipe.clip = CLIP(dataclasses.replace(TINY, text_vocab=pipe.tokenizer.vocab_size)).eval()
    source = make_sample(0, "train", 5).image
    prompts = ["", "a red circle"]  # a variation, and a completion under a caption
    out = pipe(prompts, num_images=2, seed=5, rerank=3, image=source, keep_rows=2)
    # Independently: the same 6 candidates per prompt; the variation's scored against the
    # source by CLIP's image tower, the caption's against the caption.
    pixels = torch.from_numpy(np.asarray(source).copy()).permute(2, 0, 1)[None] / 255
    codes = pipe.vae.encode(pixels)
    images = pipe.decode(pipe.generate_codes(prompts, 6, seed=5, prime=codes[:, :8]))
    to_source = pipe.clip.encode_image(images[:6]) @ pipe.clip.encode_image(pixels)[0]
    to_caption = pipe.score([prompts[1]] * 6, images[6:])
    best = torch.stack([to_source, to_caption]).sort(dim=1, descending=True).values[:, :2]
    assert out.scores == pytest.approx(best.flatten().tolist(), abs=1e-5)


def test_best_distinct_takes_each_image_once_before_repeating():
    from dalle.reranking import best_distinct

    images = torch.zeros(5, 3, 2, 2)
    images[1, 0] = 1.0  # images 0, 2 and 4 are one image; 1 and 3 differ from it and each other
    images[3, 1] = 0.5
    scores = torch.tensor([0.9, 0.5, 0.9, 0.1, 0.9])  # the same image scores the same
    assert best_distinct(scores, images, 3) == [0, 1, 3]
    assert best_distinct(scores, images, 4) == [0, 2, 1, 3]  # a repeat only to fill in
    assert best_distinct(scores, images, 1) == [0]


def test_rerank_without_clip_is_a_clear_error(pipeline_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="no clip/"):
        DallePipeline.from_pretrained(pipeline_dir)("a red circle", rerank=2)
    argv = ["generate", "--model", str(pipeline_dir), "a red circle", "--rerank", "4"]
    assert main([*argv, "--out", str(tmp_path / "gen")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--rerank needs a CLIP model" in err and "no clip/" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "gen").exists()


def test_train_clip_eval_and_generate_rerank(pipeline_dir, tmp_path, capsys):
    model = tmp_path / "model"
    DallePipeline.from_pretrained(pipeline_dir).save_pretrained(model)
    argv = ["train-clip", "--data", "shapes", "--out", str(tmp_path / "run"), "--model", str(model)]
    argv += ["--steps", "2", "--batch-size", "4", "--save-every", "2"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["retrieval"]) == {"text_to_image", "image_to_text", "n"}
    assert (model / "clip" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "model" / "clip" / "config.json").is_file()
    assert main(["eval", "clip", "--model", str(tmp_path / "run"), "--num", "8"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == 8 and 0 <= got["text_to_image"]["seen"] <= 1
    out = tmp_path / "gen"
    argv = ["generate", "--model", str(model), "a red circle", "--num-images", "2", "--rerank", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["score"] >= lines[1]["score"]


def test_train_clip_mends_a_folder_whose_defaults_rerank_without_clip(pipeline_dir, tmp_path):
    model = tmp_path / "model"  # e.g. a demo folder whose clip/ was deleted
    DallePipeline.from_pretrained(pipeline_dir).save_pretrained(model)
    (model / "generation.json").write_text(json.dumps({"rerank": 2, "cond_scale": 2.0,
        "temperature": 0.5, "top_k": None, "top_p": None}))  # fmt: skip
    with pytest.raises(ValueError, match="rerank needs a CLIP model"):
        DallePipeline.from_pretrained(model)
    argv = ["train-clip", "--data", "shapes", "--out", str(tmp_path / "run"), "--model", str(model)]
    assert main([*argv, "--steps", "2", "--batch-size", "4"]) == 0  # the error's own advice
    pipe = DallePipeline.from_pretrained(model)
    assert pipe.clip is not None and pipe.sampler.rerank == 2


def test_clip_that_does_not_fit_the_pipeline_is_refused(pipeline_dir):
    pipe = DallePipeline.from_pretrained(pipeline_dir)
    with pytest.raises(ValueError, match="CLIP expects text_vocab"):
        other = dataclasses.replace(TINY, text_vocab=pipe.tokenizer.vocab_size + 1)
        DallePipeline(pipe.tokenizer, pipe.vae, pipe.transformer, CLIP(other))
    small = dataclasses.replace(TINY, text_vocab=pipe.tokenizer.vocab_size, image_size=32,
                                conv_widths=(8, 8))  # fmt: skip
    with pytest.raises(ValueError, match="CLIP reads 3x32x32"):
        DallePipeline(pipe.tokenizer, pipe.vae, pipe.transformer, CLIP(small))


def test_eval_clip_without_a_model_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "clip", "--model", str(tmp_path)]) == 2
    assert "no CLIP here" in capsys.readouterr().err


def test_train_clip_resumes_exactly(tmp_path):
    from dalle.train.checkpoint import checkpoints

    run = tmp_path / "run"
    argv = ["train-clip", "--data", "shapes", "--out", str(run), "--steps", "4"]
    argv += ["--batch-size", "4", "--checkpoint-every", "2", "--save-every", "4"]
    assert main(argv) == 0
    weights = run / "model" / "clip" / "model.safetensors"
    final = weights.read_bytes()
    checkpoints(run)[-1].unlink()  # back to step 2
    weights.unlink()
    assert main([*argv, "--resume"]) == 0
    assert weights.read_bytes() == final


def test_train_clip_in_bf16_records_and_resumes_its_precision(tmp_path, capsys):
    """`train-clip --precision bf16`: the recipe's precision reaches the loop (recorded in the
    run's settings); resuming with another precision is refused; an old run folder whose
    settings lack the field resumes as fp32."""
    run = tmp_path / "run"
    argv = ["train-clip", "--data", "shapes", "--out", str(run), "--steps", "2"]
    argv += ["--batch-size", "4", "--checkpoint-every", "1", "--save-every", "2"]
    assert main([*argv, "--precision", "bf16"]) == 0
    settings = json.loads((run / "train_config.json").read_text())
    assert settings["train"]["precision"] == "bf16"
    assert CLIPTrainConfig(precision="bf16").optim().precision == "bf16"
    capsys.readouterr()
    assert main([*argv, "--precision", "fp32", "--resume"]) == 2
    assert "--resume needs the settings" in capsys.readouterr().err
    old = tmp_path / "old"
    assert main(["train-clip", "--data", "shapes", "--out", str(old), *argv[5:]]) == 0
    recorded = json.loads((old / "train_config.json").read_text())
    del recorded["train"]["precision"]  # written before the field existed
    (old / "train_config.json").write_text(json.dumps(recorded))
    assert main(["train-clip", "--data", "shapes", "--out", str(old), *argv[5:], "--resume"]) == 0
    with pytest.raises(ValueError, match="precision must be one of"):
        CLIPTrainConfig(precision="fp8")
