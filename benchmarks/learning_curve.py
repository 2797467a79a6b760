"""Learning curve of the demo's recipe: prompt fidelity against training seconds, from one run.

Trains the demo's tokenizer and dVAE (its 9.5-minute budget share), encodes ``--images``
scenes, then trains the transformer with the demo's recipe (precision by
``bf16_pays_off``, the compiled step, colour dropout for a product codebook) for ``--steps``,
keeping the model at each ``--snapshots`` step (``train_transformer(snapshots=...)``). Each
snapshot gets the demo's usual sampling defaults (temperature 0.5, guidance 2) as its
``generation.json`` and is scored by ``benchmarks/dalle_fidelity.py`` with no sampling flags:
48 fresh prompts x 4, seen pairs, held-out pairs and two-object prompts.

    python benchmarks/learning_curve.py [--steps 6000] [--snapshots 750,1500,3000,4500,6000]
        [--lr LR] [--batch-size B] [--optimizer adamw|muon] [--dim D --depth L --heads H] [--images N]
        [--work DIR] [--json FILE]

Seconds are the transformer's training seconds at that step (``elapsed_s`` of its
``metrics.jsonl``, compiling included). A snapshot before the last is the model part-way
through one cosine schedule (its learning rate not yet decayed), so an earlier point is a
lower bound on what a run of that length would reach. The headline is the first snapshot's
seconds at which two-object prompts are right >= 50 % of the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from common import REPO, RESULTS, header, run_timed, write_json
from dalle.train.train_config import OPTIMIZERS, TransformerTrainConfig

TWO_OBJECT_BAR = 0.5


def seconds_at(metrics: Path, step: int) -> float:
    """The training seconds logged at ``step`` (or the first logged step after it)."""
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if row.get("step", 0) >= step and "elapsed_s" in row:
            return float(row["elapsed_s"])
    raise ValueError(f"{metrics} logs no step >= {step}")


def score(snapshot: Path, work: Path) -> dict:
    """No-flag prompt fidelity of one snapshot: seen, held-out, two-object (seen + held-out)."""
    out = work / "score.json"
    cmd = [sys.executable, str(Path(__file__).with_name("dalle_fidelity.py"))]
    cmd += ["--model", str(snapshot), "--out", str(work), "--json", str(out)]
    done, wall = run_timed(cmd)
    if done.returncode != 0:
        raise RuntimeError(f"dalle_fidelity.py failed on {snapshot}")
    report = json.loads(out.read_text())
    two = [report["breakdown"][f"2/{split}"]["counts"]["correct"] for split in ("seen", "held_out")]
    right, total = sum(c[0] for c in two), sum(c[1] for c in two)
    return {
        "seen": report["fidelity"]["seen"],
        "held_out": report["fidelity"]["held_out"],
        "two_object": right / total,
        "two_object_counts": [right, total],
        "score_wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--snapshots", default="750,1500,3000,4500,6000")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help=f"default: the recipe's ({TransformerTrainConfig.optimizer})")  # fmt: skip
    parser.add_argument("--vae-downsample", type=int, default=None,
                        help="pixels per code side (default: the shapes preset's 4)")  # fmt: skip
    parser.add_argument("--vae-vocab", type=int, default=None, help="dVAE codebook size")
    parser.add_argument("--dim", type=int, default=None, help="transformer width (tiny: 128)")
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks (tiny: 3)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (tiny: 4)")
    parser.add_argument("--images", type=int, default=8550, help="encoded scenes (the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "learning_curve")
    parser.add_argument("--json", type=Path, default=RESULTS / "learning_curve.json")
    args = parser.parse_args()
    snapshots = sorted({int(s) for s in args.snapshots.split(",")})

    from dalle.config import TRANSFORMER_PRESETS, VAE_PRESETS, to_dict
    from dalle.data import ShapesData
    from dalle.demo_recipe import (
        COLOUR_DROPOUT,
        COMPILE,
        SAMPLING_CANDIDATES,
        TOKENIZER_CAPTIONS,
        VAE_SHARE,
        _train_vae,
    )
    from dalle.pipeline import DallePipeline
    from dalle.train import (
        RunConfig,
        encode,
        train_tokenizer,
        train_transformer,
    )
    from dalle.train.budget import bf16_pays_off

    # The transformer's own draws: the demo's first sampling candidate without CLIP reranking
    # (a snapshot has no CLIP), which is what every recorded curve drew.
    own_draws = dataclasses.replace(SAMPLING_CANDIDATES[0], rerank=None)
    quiet = RunConfig(save_every=10**9, force=True, compile=COMPILE)
    tokenizer = train_tokenizer(ShapesData(TOKENIZER_CAPTIONS, args.seed))
    shape = {"downsample": args.vae_downsample, "vocab_size": args.vae_vocab}
    model = dataclasses.replace(
        VAE_PRESETS["shapes"], **{k: v for k, v in shape.items() if v is not None}
    )
    vae, vae_report = _train_vae(args.work / "vae", VAE_SHARE * 570, args.seed, quiet, model)
    tokens = encode(vae, ShapesData(args.images, args.seed), batch_size=128)
    cfg = TransformerTrainConfig(
        seed=args.seed,
        steps=args.steps,
        precision="bf16" if bf16_pays_off() else "fp32",
        colour_dropout=COLOUR_DROPOUT if vae.cfg.palette else 0.0,
    )
    changes = {"lr": args.lr, "batch_size": args.batch_size, "optimizer": args.optimizer}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    tiny = TRANSFORMER_PRESETS["tiny"]
    shape = {"dim": args.dim, "depth": args.depth, "heads": args.heads}
    if args.depth is not None:  # one mask per block, all the preset's kind
        shape["attention"] = (tiny.attention[0],) * args.depth
    arch = dataclasses.replace(tiny, **{k: v for k, v in shape.items() if v is not None})
    run_dir = args.work / "transformer"
    train_transformer(tokens, vae, run_dir, cfg, arch, tokenizer=tokenizer, run=quiet,
                      snapshots=snapshots)  # fmt: skip

    rows = []
    for step in snapshots:
        folder = run_dir / "snapshots" / f"step_{step:06d}"
        pipe = DallePipeline.from_pretrained(folder)
        pipe.sampler = own_draws
        pipe.save_pretrained(folder)
        row = {"step": step, "train_s": seconds_at(run_dir / "metrics.jsonl", step)}
        row.update(score(folder, args.work / f"score_{step:06d}"))
        rows.append(row)
        print(
            f"step {step:>6} {row['train_s']:>7.0f} s  seen {100 * row['seen']:5.1f} %  "
            f"held-out {100 * row['held_out']:5.1f} %  two-object {100 * row['two_object']:5.1f} %",
            flush=True,
        )
    reached = [r["train_s"] for r in rows if r["two_object"] >= TWO_OBJECT_BAR]
    report = {
        **header("learning_curve"),
        "recipe": dataclasses.asdict(cfg),
        "transformer": to_dict(arch),
        "images": args.images,
        "vae": {**vae_report, "config": to_dict(vae.cfg)},
        "sampling": to_dict(own_draws),
        "curve": rows,
        "seconds_to_two_object_50": reached[0] if reached else None,
    }
    write_json(args.json, report)
    headline = f"{reached[0]:.0f} s" if reached else f"not within {rows[-1]['train_s']:.0f} s"
    print(f"seconds to two-object >= {TWO_OBJECT_BAR:.0%}: {headline}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
