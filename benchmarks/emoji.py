"""The emoji recipe and benchmark: every stage on real artwork, through the public API.

Builds the ``train`` and ``holdout`` splits of Google's emoji (``dalle data emoji``), trains
the tokenizer, the dVAE (the general preset), the transformer and CLIP on ``train`` within
``--minutes`` of CPU, then measures:

- dVAE PSNR and codebook usage on the held-out images;
- seen captions: the rank of the prompt's own emoji among all training images, by L2 on
  32x32 pixels, over generations (top-1 and top-5);
- held-out (emoji, skin tone) pairs: whether the nearest of that emoji's five tone variants
  is the asked tone (chance 20 %);
- CLIP retrieval over the held-out images and their captions.

    python benchmarks/emoji.py [--minutes 30] [--source emoji-datasource-google-16.0.0.tgz]
        [--work runs/emoji] [--prompts 48] [--samples 2] [--json FILE]

Prints a table and writes JSON (machine, torch, threads, settings, timings, figures) and a
grid of prompts and generations (``WORK/samples.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, header, write_json

VAE_SHARE = 0.17  # of the budget, as the demo; its default recipe must fit in 5 minutes
CLIP_SHARE = 0.06
SAMPLING_SHARE = 0.05
SAMPLING = {"temperature": 0.5, "cond_scale": 2.0}


def build(work: Path, source: Path | None) -> tuple[Path, Path]:
    from dalle.data import emoji

    package = source or emoji.fetch(work / "cache")
    folders = work / "emoji_train", work / "emoji_holdout"
    for folder, split in zip(folders, ("train", "holdout"), strict=True):
        if not (folder / "LICENSE").is_file():
            emoji.write_folder(folder, package, split, force=True)
    return folders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--source", type=Path, help="the npm package's .tgz (default: npm pack)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "emoji")
    parser.add_argument("--vae-preset", default=None, help="dVAE preset (default: the folder one)")
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=48, help="seen and held-out prompts each")
    parser.add_argument("--samples", type=int, default=2, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "emoji.json")
    args = parser.parse_args()

    import torch

    from dalle.config import CLIP_PRESETS, TRANSFORMER_PRESETS, VAE_PRESETS
    from dalle.data import FolderData
    from dalle.data.emoji import TONES
    from dalle.eval.nearest import nearest_choice, own_rank, top_k
    from dalle.eval.reconstruction import evaluate_vae
    from dalle.eval.retrieval import retrieval
    from dalle.images import image_to_tensor, load_image
    from dalle.outputs import write_generation
    from dalle.sampler import Sampler
    from dalle.train import (
        CLIPTrainConfig,
        RunConfig,
        TransformerTrainConfig,
        VAETrainConfig,
        encode,
        train_clip,
        train_tokenizer,
        train_transformer,
        train_vae,
    )
    from dalle.train.budget import clip_steps_within, timed_transformer

    t_start = time.perf_counter()
    budget = args.minutes * 60
    timings: dict[str, float] = {}
    last = [t_start]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - last[0], 1)
        last[0] = now

    train_dir, holdout_dir = build(args.work, args.source)
    data, held = FolderData(train_dir), FolderData(holdout_dir)
    lap("data_s")
    runs, run = args.work / "runs", RunConfig(save_every=10**9, force=True)

    tokenizer = train_tokenizer(data)
    lengths = [len(tokenizer.tokenize(c)) for c in data.captions()]
    text_len = min(64, max(lengths))
    lap("tokenizer_s")

    vae_cfg = VAE_PRESETS[args.vae_preset or "tiny"]
    recipe = VAETrainConfig(seed=args.seed)
    if args.vae_steps:
        recipe = dataclasses.replace(recipe, steps=args.vae_steps)
    print(f"[1/5] dVAE: {recipe.steps} steps", flush=True)
    vae = train_vae(data, runs / "vae", recipe, vae_cfg, run).model
    held_images, held_captions = held.eval_images(10_000, vae_cfg.image_size)
    vae_report = evaluate_vae(vae, held_images)
    lap("vae_s")

    print("[2/5] encoding", flush=True)
    tokens = encode(vae, data, batch_size=128)
    lap("encode_s")

    # The transformer gets what CLIP and the drawing leave: a probe plans its steps, and the
    # run re-plans them from its own step time to end on time (dalle.train.loop.StepPlan).
    left = budget - (time.perf_counter() - t_start)
    seconds = left - (CLIP_SHARE + SAMPLING_SHARE) * budget
    model_cfg = dataclasses.replace(TRANSFORMER_PRESETS["tiny"], text_len=text_len)
    train_cfg = TransformerTrainConfig(seed=args.seed)
    train_cfg, timed = timed_transformer(
        seconds, tokens, vae, tokenizer, train_cfg, run, model_cfg
    )
    print(f"[3/5] transformer: {seconds:.0f} s, planned {train_cfg.steps} steps", flush=True)
    trained = train_transformer(
        tokens, vae, runs / "transformer", train_cfg, model_cfg, tokenizer, timed
    )
    pipe, trained_steps = trained.model, int(trained.metrics["step"])
    lap("transformer_s")

    clip_cfg = dataclasses.replace(
        CLIP_PRESETS["tiny"], text_vocab=tokenizer.vocab_size, text_len=text_len
    )
    clip_train = CLIPTrainConfig(seed=args.seed)
    steps = clip_steps_within(CLIP_SHARE * budget, data, tokenizer, clip_train, clip_cfg)
    clip_train = dataclasses.replace(clip_train, steps=steps)
    print(f"[4/5] CLIP: {steps} steps", flush=True)
    pipe.clip = train_clip(data, tokenizer, runs / "clip", clip_train, clip_cfg, run).model
    clip_report = retrieval(pipe.clip, tokenizer, held_images, held_captions)
    lap("clip_s")
    pipe.sampler = Sampler(**SAMPLING)  # the model's defaults (generation.json)
    pipe.save_pretrained(args.work / "model")

    # Seen captions: base emoji (no skin tone) drawn at random; held out: (emoji, tone) pairs.
    print("[5/5] generating", flush=True)
    rng = random.Random(args.seed)
    stems = sorted(p.stem for p in train_dir.glob("*.txt"))
    captions = {s: (train_dir / f"{s}.txt").read_text().strip() for s in stems}
    index = {s: i for i, s in enumerate(stems)}
    base = [s for s in stems if "-1f3f" not in s]
    seen = rng.sample(base, min(args.prompts, len(base)))
    references = torch.stack([image_to_tensor(load_image(train_dir / f"{s}.png")) for s in stems])
    n = args.samples
    out = pipe([captions[s] for s in seen], num_images=n, seed=args.seed)
    generated = torch.stack([image_to_tensor(im) for im in out.images])
    targets = [index[s] for s in seen for _ in range(n)]
    ranks = own_rank(generated, references, targets)

    held_stems = sorted(p.stem for p in holdout_dir.glob("*.txt"))
    held_pick = rng.sample(held_stems, min(args.prompts, len(held_stems)))
    held_prompts = [(holdout_dir / f"{s}.txt").read_text().strip() for s in held_pick]
    out_held = pipe(held_prompts, num_images=n, seed=args.seed)
    stem_of = {caption: s for s, caption in captions.items()}
    tones = list(TONES.values())
    candidates, asked = [], []
    for s, prompt in zip(held_pick, held_prompts, strict=True):
        name, tone = prompt.rsplit(", ", 1)  # "waving hand sign, medium-dark skin tone"
        variants = []
        for t in tones:  # the asked tone is the held-out image; the other four are in train
            path = holdout_dir / f"{s}.png"
            if f"{t} skin tone" != tone:
                path = train_dir / f"{stem_of[f'{name}, {t} skin tone']}.png"
            variants.append(image_to_tensor(load_image(path)))
        candidates += [torch.stack(variants)] * n
        asked += [tones.index(tone.removesuffix(" skin tone"))] * n
    held_generated = torch.stack([image_to_tensor(im) for im in out_held.images])
    picks = nearest_choice(held_generated, torch.stack(candidates))
    tone_acc = float((picks == torch.tensor(asked)).float().mean())
    lap("generate_s")
    timings["total_s"] = round(time.perf_counter() - t_start, 1)

    show = 12
    sheet_prompts = [captions[s] for s in seen[: show // 2]] + held_prompts[: show // 2]
    sheet_images = out.images[: n * (show // 2)] + out_held.images[: n * (show // 2)]
    (args.work / "samples").mkdir(exist_ok=True)
    write_generation(args.work / "samples", sheet_prompts, sheet_images, n, args.seed)

    result = {
        **header("emoji"),
        "budget_minutes": args.minutes,
        "timings": timings,
        "images": {"train": len(stems), "holdout": len(held_stems)},
        "vae": {
            "preset": dataclasses.asdict(vae_cfg),
            "steps": recipe.steps,
            "holdout_psnr": round(vae_report["psnr"], 2),
            "holdout_codebook_usage": round(vae_report["codebook_usage"], 3),
        },
        "transformer": {
            "steps": trained_steps,
            "planned_steps": train_cfg.steps,
            "text_len": text_len,
        },
        "clip": {"steps": clip_train.steps, "holdout_retrieval": clip_report},
        "sampling": {**SAMPLING, "samples_per_prompt": n},
        "seen": {
            "prompts": len(seen),
            "top1": top_k(ranks, 1),
            "top5": top_k(ranks, 5),
            "median_rank": sorted(ranks)[len(ranks) // 2],
        },  # fmt: skip
        "held_out_tone": {"prompts": len(held_pick), "accuracy": tone_acc, "chance": 0.2},
    }
    write_json(args.json, result)
    rows = [
        ("total time", f"{timings['total_s']:.0f} s"),
        ("dVAE held-out PSNR", f"{vae_report['psnr']:.2f} dB ({recipe.steps} steps, {timings['vae_s']:.0f} s)"),
        ("dVAE codebook usage", f"{100 * vae_report['codebook_usage']:.1f} %"),
        ("seen: own emoji nearest", f"{100 * top_k(ranks, 1):.1f} % (top-5 {100 * top_k(ranks, 5):.1f} %)"),
        ("held-out tone nearest", f"{100 * tone_acc:.1f} % (chance 20 %)"),
        ("CLIP held-out t->i", f"{100 * clip_report['text_to_image']['all']:.1f} %"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"{name:<26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
