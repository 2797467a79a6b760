"""The public training API (``dalle.train``) as a notebook uses it, and the import layering it
rests on: the library never imports the command line, command modules never import each
other, and ``train/`` and ``eval/`` never import each other."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle.config import CLIPConfig, TransformerConfig, VAEConfig
from dalle.data import FolderData, open_data
from dalle.data.shapes import write_folder
from dalle.pipeline import DallePipeline
from dalle.sampler import Sampler
from dalle.train import (
    CheckpointConfig,
    CLIPTrainConfig,
    RunConfig,
    TokenizerConfig,
    TransformerTrainConfig,
    VAETrainConfig,
    choose_sampling,
    encode,
    train_clip,
    train_tokenizer,
    train_transformer,
    train_vae,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "dalle"
VAE = VAEConfig(image_size=64, downsample=8, vocab_size=32, n_hid=8, n_init=16)
TRANSFORMER = TransformerConfig(text_len=20, dim=32, depth=1, heads=2, attention=("full",))
CLIP_TINY = CLIPConfig(text_len=20, text_dim=32, text_heads=2, text_depth=1, conv_widths=(8, 16),
                       image_dim=32, embed_dim=32)  # fmt: skip


def test_notebook_trains_all_four_stages_on_a_folder_and_generates(tmp_path):
    """The README's "Train from Python" example, shrunk to seconds."""
    write_folder(tmp_path / "pictures", "train", 32, seed=0, progress=False)
    data = open_data(tmp_path / "pictures")
    assert isinstance(data, FolderData)
    run = RunConfig(save_every=1000, checkpoint=CheckpointConfig(every=1000))
    runs = tmp_path / "runs"

    tokenizer = train_tokenizer(data, TokenizerConfig(vocab_size=300))
    vae_cfg = VAETrainConfig(steps=6, batch_size=8, warmup_steps=1, kmeans_images=16)
    vae = train_vae(data, runs / "vae", vae_cfg, VAE, run)
    tokens = encode(vae.model, data, batch_size=16, progress=False)
    dalle_cfg = TransformerTrainConfig(steps=4, batch_size=8, warmup_steps=1)
    dalle = train_transformer(
        tokens, vae.model, runs / "dalle", dalle_cfg, TRANSFORMER, tokenizer, run
    )
    clip_cfg = CLIPTrainConfig(steps=3, batch_size=8, warmup_steps=1)
    clip = train_clip(data, tokenizer, runs / "clip", clip_cfg, CLIP_TINY, run)

    pipe = dalle.model
    pipe.clip = clip.model
    candidates = [Sampler(), Sampler(temperature=0.5, cond_scale=2.0)]
    pipe.sampler, table = choose_sampling(pipe, data.examples(4, seed=1), candidates)
    assert pipe.sampler in candidates  # no judge for a folder: scored by CLIP
    assert all(row["metric"] == "clip" and -1 <= row["score"] <= 1 for row in table)
    pipe.save_pretrained(tmp_path / "model")
    again = DallePipeline.from_pretrained(tmp_path / "model")
    assert again.sampler == pipe.sampler
    out = again(["a red circle"], num_images=2, seed=3, rerank=2)
    assert len(out.images) == 2 and out.images[0].size == (64, 64) and out.scores is not None
    assert set(again.examples) <= set(tokens.captions) and again.examples  # its own captions

    assert len(tokens) == 32 and tokens.grid == VAE.grid_size
    for trained, part in ((vae, "model/config.json"), (dalle, "model/transformer"),
                          (clip, "model/clip")):  # fmt: skip
        assert (trained.run_dir / part).exists() and (trained.run_dir / "metrics.jsonl").is_file()
        assert (trained.run_dir / "checkpoints").is_dir()  # the final checkpoint
        assert trained.metrics["step"] > 0
    saved = json.loads((runs / "dalle" / "train_config.json").read_text())
    assert saved["train"]["steps"] == 4 and saved["model"]["text_vocab"] == tokenizer.vocab_size


def test_timed_transformer_plans_from_its_probe_and_leaves_the_rest_as_a_time_limit(tmp_path):
    """The probe's step count is the first plan and the run's time limit is what the probe
    left; a budget the probe used up leaves no limit (the probe's minimum of steps)."""
    from dalle.train.budget import timed_transformer

    write_folder(tmp_path / "pictures", "train", 16, seed=0, progress=False)
    data = open_data(tmp_path / "pictures")
    run = RunConfig(save_every=7, progress=False)
    vae_cfg = VAETrainConfig(steps=2, batch_size=8, warmup_steps=1, kmeans_images=16)
    vae = train_vae(data, tmp_path / "vae", vae_cfg, VAE, run).model
    tokens = encode(vae, data, batch_size=16, progress=False)
    tokenizer = train_tokenizer(data, TokenizerConfig(vocab_size=300))
    recipe = TransformerTrainConfig(steps=4, batch_size=8, warmup_steps=1, lr=1e-3)
    planned, timed = timed_transformer(30.0, tokens, vae, tokenizer, recipe, run, TRANSFORMER)
    assert planned == dataclasses.replace(recipe, steps=planned.steps) and planned.steps > 10
    assert timed == dataclasses.replace(run, seconds=timed.seconds) and 0 < timed.seconds < 30
    spent, untimed = timed_transformer(0.0, tokens, vae, tokenizer, recipe, run, TRANSFORMER)
    assert spent.steps == 10 and untimed == run and untimed.seconds is None


def test_snapshots_keep_the_model_at_those_steps(tmp_path):
    """A learning curve from one run: the snapshot at the last step is the final model, an
    earlier one differs, and a step outside the run is refused before anything is written."""
    write_folder(tmp_path / "pictures", "train", 16, seed=0, progress=False)
    data = open_data(tmp_path / "pictures")
    run = RunConfig(save_every=1000, progress=False)
    vae_cfg = VAETrainConfig(steps=2, batch_size=8, warmup_steps=1, kmeans_images=16)
    vae = train_vae(data, tmp_path / "vae", vae_cfg, VAE, run).model
    tokens = encode(vae, data, batch_size=16, progress=False)
    tokenizer = train_tokenizer(data, TokenizerConfig(vocab_size=300))
    cfg = TransformerTrainConfig(steps=4, batch_size=8, warmup_steps=1)
    with pytest.raises(ValueError, match="snapshots must be steps from 1 to 4, got \\[0, 4\\]"):
        train_transformer(tokens, vae, tmp_path / "bad", cfg, TRANSFORMER, tokenizer, run,
                          snapshots=(4, 0))  # fmt: skip
    assert not (tmp_path / "bad").exists()
    trained = train_transformer(tokens, vae, tmp_path / "dalle", cfg, TRANSFORMER, tokenizer, run,
                                snapshots=(2, 4))  # fmt: skip
    kept = sorted(p.name for p in (trained.run_dir / "snapshots").iterdir())
    assert kept == ["step_000002", "step_000004"]
    final = trained.model.transformer.state_dict()
    last = DallePipeline.from_pretrained(trained.run_dir / "snapshots" / "step_000004")
    early = DallePipeline.from_pretrained(trained.run_dir / "snapshots" / "step_000002")
    assert all(torch.equal(v, last.transformer.state_dict()[k]) for k, v in final.items())
    assert not all(torch.equal(v, early.transformer.state_dict()[k]) for k, v in final.items())


def test_a_stage_refuses_a_used_run_folder_unless_told(tmp_path):
    write_folder(tmp_path / "pictures", "train", 16, seed=0, progress=False)
    data = open_data(tmp_path / "pictures")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("a user's file")
    cfg = VAETrainConfig(steps=2, batch_size=8, warmup_steps=1, kmeans_images=16)
    with pytest.raises(ValueError, match="not empty"):
        train_vae(data, tmp_path / "run", cfg, VAE)
    assert (tmp_path / "run" / "keep.txt").read_text() == "a user's file"
    trained = train_vae(data, tmp_path / "run", cfg, VAE, RunConfig(force=True, progress=False))
    assert (trained.run_dir / "model" / "config.json").is_file()


def test_shapes_and_folder_data_offer_the_same_interface(tmp_path):
    shapes = open_data("shapes", num=8, seed=1)
    images, captions = shapes.eval_images(4, 64)
    assert images.shape == (4, 3, 64, 64) and len(captions) == 4
    batch = next(shapes.batches(64, 4, seed=0))
    positives = shapes.positives(batch)
    assert positives.shape == (4, 4) and bool(positives.diagonal().all())
    examples = shapes.examples(8)
    assert len(examples) == 8 and len(set(examples)) == 8

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, caption in enumerate(["a cat", "a dog", "a cat"]):
        Image.new("RGB", (80, 60), (i * 80, 0, 0)).save(pictures / f"{i}.png")
        (pictures / f"{i}.txt").write_text(caption + "\n")
    (pictures / "broken.png").write_bytes(b"not a png")
    (pictures / "broken.txt").write_text("a bird\n")
    folder = open_data(pictures)
    assert folder.positives(batch) is None  # the CLIP loss falls back to "same caption"
    assert sorted(folder.examples(8)) == ["a bird", "a cat", "a dog"]
    images, captions = folder.eval_images(8, 32)
    assert images.shape == (3, 3, 32, 32) and captions == ["a cat", "a dog", "a cat"]
    assert folder.num_skipped == 0  # evaluation passes are not the training run's report
    items = list(folder.items(32))
    assert len(items) == 3 and folder.num_skipped == 1 and "broken.png" in folder.report()
    first = next(folder.batches(32, 2, seed=0))
    assert first["image"].shape == (2, 3, 32, 32) and len(first["caption"]) == 2


def test_importing_the_training_api_pulls_in_no_command_line():
    code = "import sys, dalle.train; print([m for m in sys.modules if m.startswith('dalle.cli')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """The ``dalle`` modules a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {
                f"{node.module}.{a.name}" for a in node.names if _is_module(node.module, a.name)
            }
    return {n for n in names if n == "dalle" or n.startswith("dalle.")}


def _is_module(package: str, name: str) -> bool:
    folder = SRC.parent.joinpath(*package.split("."))
    return (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: _module(p))
def test_imports_run_one_way(path):
    module, imported = _module(path), _imports(path)
    if not module.startswith("dalle.cli") and module != "dalle.__main__":  # python -m dalle
        assert not [m for m in imported if m.startswith("dalle.cli")], "the library imports the CLI"
    elif module not in ("dalle.cli", "dalle.cli.common"):  # a command module
        others = {m for m in imported if m.startswith("dalle.cli.")} - {"dalle.cli.common"}
        assert not others, f"a command module imports another: {sorted(others)}"
    if module.startswith("dalle.train"):
        assert not [m for m in imported if m.startswith("dalle.eval")], "train/ imports eval/"
    if module.startswith("dalle.eval"):
        assert not [m for m in imported if m.startswith("dalle.train")], "eval/ imports train/"


def test_nearest_neighbour_metric_on_a_hand_made_case():
    from dalle.eval.nearest import nearest_choice, own_rank, top_k

    def solid(r: float, g: float, b: float) -> torch.Tensor:
        return torch.tensor([r, g, b]).view(3, 1, 1).expand(3, 64, 64)

    refs = torch.stack([solid(1, 0, 0), solid(0, 1, 0), solid(0, 0, 1), solid(0.9, 0.1, 0)])
    gen = torch.stack([solid(1, 0, 0), solid(0.91, 0.09, 0), solid(0, 0, 0.8)])
    # its own red picture exactly; asked for red, but the red-orange one is nearer (rank 1);
    # asked for green, but blue and red-orange are nearer (red is as far: not nearer)
    ranks = own_rank(gen, refs, targets=[0, 0, 1])
    assert ranks == [0, 1, 2]
    assert top_k(ranks, 1) == 1 / 3 and top_k(ranks, 2) == 2 / 3 and top_k(ranks, 3) == 1.0
    candidates = torch.stack([refs[:3], refs[1:]])  # (2, 3, C, H, W)
    assert nearest_choice(gen[1:], candidates).tolist() == [0, 1]


def test_each_dataset_picks_its_dvae_preset(tmp_path):
    from dalle.config import VAE_PRESETS

    write_folder(tmp_path / "pictures", "train", 16, seed=0, progress=False)
    assert open_data("shapes").vae_preset == "shapes" and VAE_PRESETS["shapes"].palette == 8
    assert open_data(tmp_path / "pictures").vae_preset == "tiny"
    assert open_data("shards/{000..009}.tar").vae_preset == "tiny"
    assert VAE_PRESETS["tiny"].palette == 0  # a flat codebook: any colours, not 8
    cfg = VAETrainConfig(steps=1, batch_size=8, warmup_steps=0, kmeans_images=128, kmeans_iters=1)
    quiet = RunConfig(progress=False)
    trained = train_vae(open_data(tmp_path / "pictures"), tmp_path / "run", cfg, run=quiet)
    assert trained.model.cfg == VAE_PRESETS["tiny"]
