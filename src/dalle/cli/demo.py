"""``dalle demo``: the README's first command. On the built-in shapes dataset it trains the
tokenizer, the dVAE, the transformer and CLIP within a time budget, saves ``OUT/model/``
(loadable by ``dalle generate``), draws a fixed set of prompts (some with held-out colour-shape
pairs) with CLIP reranking into ``OUT/samples.png`` and writes ``OUT/report.json``: timings,
dVAE PSNR, CLIP retrieval and the shapes checker's prompt fidelity with and without reranking,
seen and held-out separately."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from dalle.cli.common import data_captions, positive_float, seed_int

# Shares of the budget; the transformer gets what the others leave, and the final samples
# (RERANK candidates per image, then a plain draw to compare with) get SAMPLING_SHARE.
# The dVAE's steps get VAE_SHARE; its k-means codebook, data and evaluation take about 30 s
# more. 1 200 steps already reach 97 % reconstruction fidelity (2 400: 99 %), while every
# transformer step counts, so the dVAE's share is small.
VAE_SHARE = 0.17
ENCODE_PER_SECOND = 15  # images to encode per second of budget (at most 16 000)
CLIP_SHARE = 0.08
SAMPLING_SHARE = 0.12
# Sampling settings of the demo's samples (chosen on its own prompts, not the benchmark's).
SAMPLING = {"temperature": 0.5, "cond_scale": 2.0}
RERANK = 8
PROMPTS = (
    "a large red circle in the top left",
    "a small blue square at the bottom",
    "a yellow triangle in the center",
    "a large magenta diamond on the right",
    "a cyan circle and a small white triangle at the top",
    "a large green square in the bottom right",
    "a small orange triangle on the left and a blue circle in the bottom right",
    "a large white circle at the bottom",
    # held-out colour-shape pairs: never seen in training
    "a large green triangle in the center",
    "a small orange circle in the top right",
    "a blue diamond on the left",
    "a large white square at the top",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train everything on the built-in shapes dataset and draw prompts (minutes on a CPU)",
        description="Train a tokenizer, a dVAE, a transformer and CLIP on the built-in "
        "captioned-shapes dataset within --minutes, then generate a fixed set of prompts, "
        f"keeping the best of {RERANK} candidates per image by CLIP. Writes OUT/model/, "
        "OUT/samples.png, OUT/report.json and the training runs in OUT/runs/.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--minutes", type=positive_float, default=9.5, help="total time budget")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from dalle.cli.clip import fit_clip
    from dalle.cli.generate import write_outputs
    from dalle.cli.train import encode_data, fit_transformer
    from dalle.config import CLIP_PRESETS, TRANSFORMER_PRESETS, VAE_PRESETS, VAETrainConfig
    from dalle.data.batches import endless_batches
    from dalle.data.shapes import ShapesStream, collate
    from dalle.eval.clip import shapes_retrieval
    from dalle.eval.shapes import fidelity
    from dalle.eval.vae import evaluate_vae
    from dalle.io import prepare_output_dir, write_bytes_atomic, write_json_atomic
    from dalle.models.vae import DiscreteVAE
    from dalle.pipeline import DallePipeline
    from dalle.tokenizer import Tokenizer
    from dalle.train.clip import CLIPTrainConfig
    from dalle.train.dalle import DalleTrainConfig
    from dalle.train.loop import steps_for_budget
    from dalle.train.vae import PatchCodeObjective, VAEObjective, shapes_eval_set, train_vae

    budget = args.minutes * 60
    reusable = args.out.is_dir() and (args.out / "report.json").is_file()  # an earlier demo
    out = prepare_output_dir(args.out, force=args.force or reusable)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        return now

    t = time.perf_counter()
    tokenizer = Tokenizer.train(data_captions("shapes", 4000, args.seed), vocab_size=1024)
    t = lap("tokenizer_s", t)

    # Stage 1: the dVAE, with the default recipe cut to its share of the budget.
    print(f"[1/5] dVAE: {VAE_SHARE * budget:.0f} s on the shapes train split", flush=True)
    torch.manual_seed(args.seed)
    vae = DiscreteVAE(VAE_PRESETS["tiny"])
    recipe = VAETrainConfig(seed=args.seed)
    batches = endless_batches(ShapesStream("train", seed=args.seed), recipe.batch_size, collate)
    images = (b["image"] for b in batches)
    # Time the objective the recipe starts with (the warm start's codebook is a stand-in here).
    k, patch = vae.cfg.vocab_size, vae.cfg.channels * vae.cfg.downsample**2
    if recipe.warm_start:
        probe = PatchCodeObjective(recipe, torch.rand(k, patch))
    else:
        probe = VAEObjective(recipe)
    steps = steps_for_budget(vae, probe, images, VAE_SHARE * budget * 0.95)
    recipe = dataclasses.replace(recipe, steps=min(steps, 4 * recipe.steps))
    eval_images, eval_captions = shapes_eval_set()
    train_vae(vae, recipe, images, out / "runs" / "vae", eval_images[:16], save_every=10**9)
    vae_report = evaluate_vae(vae, eval_images, eval_captions)
    t = lap("vae_s", t)

    # Stage 2: encode a pool of training images once.
    num = min(16000, max(512, int(ENCODE_PER_SECOND * budget)))
    print(f"[2/5] encoding {num} images with the dVAE", flush=True)
    tokens = encode_data(vae, "shapes", num, 128, seed=args.seed)
    t = lap("encode_s", t)

    # Stage 3: the transformer, on what CLIP and the samples leave (fidelity climbs steeply
    # with its steps, so it gets the most). Its step-time probe runs about 5 % fast (the full
    # loop logs and checks more), hence the margin.
    left = budget - (time.perf_counter() - t_start)
    seconds = 0.95 * (left - (CLIP_SHARE + SAMPLING_SHARE) * budget)
    print(f"[3/5] transformer: {seconds:.0f} s", flush=True)
    model_cfg = TRANSFORMER_PRESETS["tiny"]
    train_cfg = DalleTrainConfig(seed=args.seed)
    steps = _transformer_steps(model_cfg, train_cfg, tokenizer, vae, tokens, seconds)
    train_cfg = dataclasses.replace(train_cfg, steps=steps)
    fit_transformer(
        vae, tokens, tokenizer, model_cfg, train_cfg, out / "runs" / "transformer", 10**9
    )
    t = lap("transformer_s", t)

    # Stage 4: CLIP, the reranker, with the transformer's caption length.
    seconds = CLIP_SHARE * budget
    print(f"[4/5] CLIP: {seconds:.0f} s", flush=True)
    pipe = DallePipeline.from_pretrained(out / "runs" / "transformer" / "model")
    clip_cfg = dataclasses.replace(
        CLIP_PRESETS["tiny"],
        text_vocab=tokenizer.vocab_size,
        text_len=pipe.transformer.cfg.text_len,
    )
    clip_train = CLIPTrainConfig(seed=args.seed)
    steps = _clip_steps(clip_cfg, clip_train, tokenizer, seconds)
    clip_train = dataclasses.replace(clip_train, steps=steps)
    run = out / "runs" / "clip"
    pipe.clip, _ = fit_clip(tokenizer, clip_cfg, clip_train, "shapes", run, 10**9)
    retrieval = shapes_retrieval(pipe.clip, tokenizer)
    t = lap("clip_s", t)

    # Stage 5: the saved pipeline draws the demo prompts, reranked and plain.
    print(f"[5/5] drawing {len(PROMPTS)} prompts x 4 images (best of {RERANK} each)", flush=True)
    pipe.save_pretrained(out / "model")
    prompts = list(PROMPTS)
    best = pipe(prompts, num_images=4, seed=args.seed, rerank=RERANK, **SAMPLING)
    plain = pipe(prompts, num_images=4, seed=args.seed, **SAMPLING)
    (out / "samples").mkdir(exist_ok=True)
    write_outputs(out / "samples", prompts, best.images, 4, args.seed, best.scores)
    write_bytes_atomic(out / "samples.png", (out / "samples" / "grid.png").read_bytes())
    fid = fidelity(zip(best.prompts, best.images, strict=True))
    fid_plain = fidelity(zip(plain.prompts, plain.images, strict=True))
    lap("generate_s", t)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)

    report = {
        "timings": timings,
        "vae": {
            "steps": recipe.steps,
            "psnr": round(vae_report["psnr"], 2),
            "codebook_usage": round(vae_report["codebook_usage"], 3),
            "reconstruction_fidelity": vae_report["fidelity"],
        },
        "transformer": {
            "steps": train_cfg.steps,
            "config": dataclasses.asdict(pipe.transformer.cfg),
        },
        "clip": {"steps": clip_train.steps, "retrieval": retrieval},
        "sampling": {**SAMPLING, "rerank": RERANK},
        "fidelity": fid,
        "fidelity_without_rerank": fid_plain,
        "prompts": list(PROMPTS),
    }
    write_json_atomic(out / "report.json", report)
    print(
        f"done in {timings['total_s']:.0f} s: dVAE {vae_report['psnr']:.1f} dB; prompt fidelity "
        f"with reranking {_pct(fid)}, without {_pct(fid_plain)}. Images: {out}/samples.png; "
        f"model: {out}/model (try: dalle generate --model {out}/model 'a red circle' --out gen)"
    )
    return 0


def _pct(fid: dict) -> str:
    """``seen 40 %, held-out 20 %`` (a group without prompts prints as n/a)."""
    part = {k: "n/a" if fid[k] is None else f"{100 * fid[k]:.0f} %" for k in ("seen", "held_out")}
    return f"seen {part['seen']}, held-out {part['held_out']}"


def _clip_steps(clip_cfg, train_cfg, tokenizer, seconds: float) -> int:
    """Steps of the CLIP objective (data included) that fit in ``seconds`` on this machine."""
    from dalle.cli.clip import clip_batches
    from dalle.models.clip import CLIP
    from dalle.train.clip import CLIPObjective
    from dalle.train.loop import steps_for_budget

    batches = clip_batches("shapes", clip_cfg.image_size, train_cfg.batch_size, train_cfg.seed)
    return steps_for_budget(CLIP(clip_cfg), CLIPObjective(tokenizer), batches, seconds)


def _transformer_steps(model_cfg, train_cfg, tokenizer, vae, tokens, seconds: float) -> int:
    """Steps of the transformer objective that fit in ``seconds`` on this machine."""
    from dalle.cli.train import sized_config
    from dalle.data.tokens import token_batches
    from dalle.models.dalle import DALLE
    from dalle.train.dalle import DalleObjective
    from dalle.train.loop import steps_for_budget

    cfg = sized_config(model_cfg, tokenizer, vae)
    text, _ = tokenizer.encode_batch(tokens.captions[:256], cfg.text_len)
    batches = token_batches(text, tokens.codes[:256], train_cfg.batch_size)
    return steps_for_budget(DALLE(cfg), DalleObjective(train_cfg), batches, seconds)
