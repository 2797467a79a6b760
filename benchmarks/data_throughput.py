"""Transformer training throughput from the token cache against from pixels through the dVAE,
same model, same run: what ``dalle encode`` (encoding once) saves every epoch.

    python benchmarks/data_throughput.py [--repeats N] [--steps S] [--batch B]

Both paths train the ``tiny`` transformer preset (sized to a 1 024-id tokenizer) with the
project's objective and AdamW. From the cache a batch is a row gather of the token file; from
pixels it is rendered shapes scenes encoded by the ``tiny`` dVAE (untrained: the encoder costs
the same). Medians of ``--repeats`` timings of ``--steps`` steps after 3 warm-up steps; a table
on stdout and JSON (machine, torch, threads, config) on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from common import RESULTS, header, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", type=Path, default=RESULTS / "data_throughput.json")
    args = parser.parse_args()

    import torch

    from dalle.config import TRANSFORMER_PRESETS, VAE_PRESETS, to_dict
    from dalle.data.batches import endless_batches
    from dalle.data.shapes import ShapesStream, collate, make_sample
    from dalle.data.tokens import encode_pairs, token_batches
    from dalle.models.dalle_transformer import DALLE
    from dalle.models.vae import DiscreteVAE
    from dalle.tokenizer import Tokenizer
    from dalle.train.train_config import TransformerTrainConfig
    from dalle.train.transformer_trainer import DalleObjective

    torch.manual_seed(0)
    captions = [make_sample(0, "train", i).caption for i in range(2000)]
    tokenizer = Tokenizer.train(captions, 1024)
    vae = DiscreteVAE(VAE_PRESETS["shapes"]).eval()
    cfg = dataclasses.replace(
        TRANSFORMER_PRESETS["tiny"],
        text_vocab=tokenizer.vocab_size,
        image_vocab=vae.cfg.vocab_size,
        image_grid=vae.cfg.grid_size,
    )
    objective = DalleObjective(TransformerTrainConfig(batch_size=args.batch))

    pixels = endless_batches(ShapesStream("train", seed=0), args.batch, collate)
    needed = (3 + args.steps) * args.repeats + 3
    cached = encode_pairs(
        vae, ((b["image"], b["caption"]) for b in (next(pixels) for _ in range(needed)))
    )
    text_all, _ = tokenizer.encode_batch(cached.captions, cfg.text_len)

    def from_cache():
        yield from token_batches(text_all, cached.codes, args.batch)

    def from_pixels():
        stream = endless_batches(ShapesStream("train", seed=1), args.batch, collate)
        while True:
            b = next(stream)
            with torch.no_grad():
                codes = vae.encode(b["image"])
            text, _ = tokenizer.encode_batch(b["caption"], cfg.text_len)
            yield text, codes

    def time_steps(source) -> float:
        model = DALLE(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = source()
        for i in range(3 + args.steps):
            if i == 3:
                t0 = time.perf_counter()
            loss, _ = objective(model, next(batches), i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    tokens_per_step = args.batch * cfg.seq_len
    results = {}
    for name, source in (("token cache", from_cache), ("pixels + dVAE", from_pixels)):
        times = [time_steps(source) for _ in range(args.repeats)]
        median = statistics.median(times)
        results[name] = {
            "seconds": [round(t, 3) for t in times],
            "tokens_per_s": round(tokens_per_step * args.steps / median),
            "sequences_per_s": round(args.batch * args.steps / median, 1),
        }
    ratio = results["token cache"]["tokens_per_s"] / results["pixels + dVAE"]["tokens_per_s"]
    report = {
        **header("data_throughput"),
        "transformer": to_dict(cfg),
        "vae": to_dict(vae.cfg),
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "results": results,
        "cache_over_pixels": round(ratio, 2),
    }
    write_json(args.json, report)
    print(f"{'source':<16} {'tokens/s':>10} {'sequences/s':>12}")
    for name, r in results.items():
        print(f"{name:<16} {r['tokens_per_s']:>10} {r['sequences_per_s']:>12}")
    print(f"token cache / pixels: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
