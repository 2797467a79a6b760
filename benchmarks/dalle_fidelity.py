"""Prompt fidelity of a trained model: prompts drawn fresh from the caption grammar (about 40 %
with a held-out colour-shape pair, from a seed no training run uses), several samples each,
generated through the `dalle generate` contract and scored by the shapes checker.

    python benchmarks/dalle_fidelity.py [--model demo_out/model] [--prompts 48] [--samples 4]
        [--cond-scale C] [--temperature T] [--top-k K] [--rerank N] [--json FILE]

Besides the seen / held-out rates (``fidelity``, as before), it names each failure
(``breakdown``, :mod:`dalle.eval.shapes_breakdown`): by object count (1 / 2) and seen /
held-out pairs, the correct rate, oracle@N (some of a prompt's N images is correct) and the
error rate of each attribute (object count, missing object, colour, shape, size, cell, and
how many colour / shape errors are another phrase's: bound to the wrong object).

With ``--rerank R`` it asks ``dalle generate`` for ``samples * R`` images with ``--rerank 1``:
exactly the candidates that ``--rerank R`` draws, all written, best first by CLIP. It replays
the pipeline's choice of the best ``samples`` distinct ones (``dalle.reranking.best_distinct``),
scores those as the shown images, and reports the candidates beside them: oracle over all
candidates against CLIP's first pick, so a generator miss (no candidate right) and a
reranker miss (a right candidate that CLIP did not put first) are told apart; and
``breakdown_candidates``, the same breakdown over every candidate (the generator alone).

Prints tables and writes JSON (machine, torch, threads, settings, timings, figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, header, run_timed, write_json

PROMPT_SEED = 31_337  # never used for training or tuning


def fresh_prompts(n: int, seed: int = PROMPT_SEED) -> list[str]:
    """``n`` captions: 60 % from the train split's grammar, 40 % with a held-out pair."""
    from dalle.data.shapes import make_sample

    held = round(0.4 * n)
    return [make_sample(seed, "train", i).caption for i in range(n - held)] + [
        make_sample(seed, "holdout", i).caption for i in range(held)
    ]


def generate_command(args: argparse.Namespace, prompt_file: Path) -> list[str]:
    """The ``dalle generate`` command line: sampling flags only where given (else the model's
    defaults apply); with ``--rerank R`` every candidate is written (``--rerank 1``)."""
    per_prompt = args.samples * (args.rerank or 1)
    cmd = [sys.executable, "-m", "dalle", "generate", "--model", str(args.model)]
    cmd += ["--prompts", str(prompt_file), "--num-images", str(per_prompt)]
    cmd += ["--seed", str(args.seed), "--out", str(args.out / "images"), "--force"]
    for flag, value in (
        ("--cond-scale", args.cond_scale),
        ("--temperature", args.temperature),
        ("--top-k", args.top_k),
        ("--rerank", None if args.rerank is None else 1),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def clip_picks(images: list[Any], k: int) -> tuple[int, ...]:
    """The ``k`` images ``--rerank`` would keep out of candidates listed best first by CLIP."""
    import torch

    from dalle.images import image_to_tensor
    from dalle.reranking import best_distinct

    rank = torch.arange(len(images), 0, -1, dtype=torch.float32)  # the manifest's order
    return tuple(best_distinct(rank, torch.stack([image_to_tensor(x) for x in images]), k))


def prompt_results(
    prompts: list[str], items: list[tuple[str, Any]], per_prompt: int, shown: int
) -> list:
    """One ``PromptResult`` per prompt from the manifest's images (prompt-major)."""
    from dalle.eval.shapes_breakdown import PromptResult, diagnose_image

    if len(items) != len(prompts) * per_prompt:
        raise ValueError(f"expected {len(prompts)} x {per_prompt} images, got {len(items)}")
    results = []
    for p, prompt in enumerate(prompts):
        chunk = items[p * per_prompt : (p + 1) * per_prompt]
        if any(text != prompt for text, _ in chunk):
            raise ValueError(f"manifest images {p * per_prompt}.. are not of prompt {prompt!r}")
        images = [image for _, image in chunk]
        picks = clip_picks(images, shown) if per_prompt > shown else tuple(range(per_prompt))
        diagnoses = tuple(diagnose_image(prompt, image) for image in images)
        results.append(PromptResult(prompt, diagnoses, picks))
    return results


def pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}"


def print_table(rows: dict[str, dict], columns: list[tuple[str, str]], legend: str) -> None:
    """One line per group: prompts, shown images, then each ``(title, rate key)`` in %."""
    print(f"{'% (objects/pairs)':<18}{'prompts':>8}{'images':>7}", end="")
    print("".join(f"{title:>9}" for title, _ in columns))
    for group, row in rows.items():
        print(f"{group:<18}{row['prompts']:>8}{row['images']:>7}", end="")
        print("".join(f"{pct(row['rates'].get(key)):>9}" for _, key in columns))
    print(legend + "\n")


def print_breakdown(rows: dict[str, dict], per_prompt: int) -> None:
    """The breakdown: errors of the shown images, then (reranked) generator against CLIP."""
    k = rows["all"]["oracle_at"]
    errors = [("correct", "correct"), (f"oracle@{k}", "oracle"), ("count", "count")]
    errors += [("missing", "missing"), ("colour", "color"), ("c.other", "color_from_other")]
    errors += [("shape", "shape"), ("s.other", "shape_from_other")]
    errors += [("size", "size"), ("cell", "cell")]
    print_table(
        rows,
        errors,
        "count: images with another number of objects; missing: of wanted objects;\n"
        "colour, shape, size, cell: of matched objects whose phrase states it;\n"
        "c.other, s.other: of colour (shape) errors, those drawing another phrase's",
    )
    if per_prompt > k:
        rerank = [("picks", "correct"), ("or.picks", "oracle_picks"), ("cands", "candidates")]
        rerank += [(f"oracle@{per_prompt}", "oracle_candidates"), ("CLIP@1", "clip_top1")]
        rerank += [("gen.miss", "generator_miss"), ("rr.miss", "reranker_miss")]
        print_table(
            rows,
            rerank,
            f"picks: CLIP's {k} per prompt; or.picks: the best {k} any picker could show;\n"
            f"cands: all {per_prompt} candidates; oracle@{per_prompt}: some candidate right;\n"
            "CLIP@1: CLIP's first right; gen.miss: no candidate right (prompts);\n"
            "rr.miss: a right candidate that CLIP did not put first (prompts)",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "demo_out" / "model")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--prompt-seed",
        type=int,
        default=PROMPT_SEED,
        help=f"seed of the prompts (default {PROMPT_SEED}, the benchmark's; tune on another)",
    )
    parser.add_argument("--cond-scale", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--rerank", type=int, default=None, help="CLIP candidates per image")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-fidelity")
    parser.add_argument("--json", type=Path, default=RESULTS / "dalle_fidelity.json")
    args = parser.parse_args()

    from dalle.eval.shapes_breakdown import PromptResult, breakdown
    from dalle.eval.shapes_fidelity import fidelity, open_pairs, read_manifest
    from dalle.model_folder import GENERATION_FILE

    prompts = fresh_prompts(args.prompts, args.prompt_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    prompt_file = args.out / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    cmd = generate_command(args, prompt_file)
    done, wall = run_timed(cmd)
    if done.returncode != 0:
        return done.returncode
    per_prompt = args.samples * (args.rerank or 1)
    items = list(open_pairs(read_manifest(args.out / "images" / "manifest.jsonl")))
    results = prompt_results(prompts, items, per_prompt, args.samples)
    shown = [
        (r.prompt, items[p * per_prompt + i][1]) for p, r in enumerate(results) for i in r.picks
    ]
    fid = fidelity(shown)
    rows = breakdown(results)
    model_report = args.model.parent / "report.json"
    saved_file = args.model / GENERATION_FILE  # the defaults that apply where no flag is given
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
    rerank = args.rerank if args.rerank is not None else (saved or {}).get("rerank")
    result = {
        **header("dalle_fidelity"),
        "generate_command": " ".join(cmd[1:]),
        "prompt_seed": args.prompt_seed,
        "prompts": len(prompts),
        "samples_per_prompt": args.samples,
        "rerank": args.rerank,
        "saved_sampling": saved,
        "candidates_per_prompt": args.samples * (rerank or 1),
        "generate_wall_s": round(wall, 1),
        "fidelity": fid,
        "breakdown": rows,
        "model_report": json.loads(model_report.read_text()) if model_report.is_file() else None,
    }
    if args.rerank is not None:
        every = [PromptResult(r.prompt, r.candidates, tuple(range(per_prompt))) for r in results]
        result["breakdown_candidates"] = breakdown(every)
    write_json(args.json, result)
    c = fid["counts"]
    drawn = f" (best of {per_prompt} candidates by CLIP)" if args.rerank else ""
    summary = [
        ("images", f"{fid['n']} ({len(prompts)} prompts x {args.samples}){drawn}"),
        ("generate wall time", f"{wall:.1f} s"),
        ("seen pairs", f"{pct(fid['seen'])} % ({c['seen'][0]}/{c['seen'][1]})"),
        ("held-out pairs", f"{pct(fid['held_out'])} % ({c['held_out'][0]}/{c['held_out'][1]})"),
        ("overall", f"{pct(fid['overall'])} %"),
    ]
    for name, value in summary:
        print(f"{name:<22} {value}")
    print()
    print_breakdown(rows, per_prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
