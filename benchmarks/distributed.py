"""Data-parallel training speed and memory: two gloo ranks under ``torchrun`` on the CPU.

Launches ``torchrun --standalone --nproc-per-node RANKS`` on this script's worker, which
trains the ``M`` benchmark transformer of ``benchmarks/speed.py`` (dim 256, depth 4, 8 heads,
16 text tokens, 16 x 16 codes of 512) from random token codes through the library's training
loop (``dalle.train.loop.train``, AdamW, a global batch of ``--batch`` split over the ranks)
and reports training tokens/s (rank 0's wall clock over the steps after ``--warmup``) and the
peak resident memory of each rank. Each rank runs ``--threads`` torch threads.

    python benchmarks/distributed.py [--engine trainer|fsdp2] [--ranks 2] [--steps 30]
        [--label NAME] [--json FILE]

``--engine trainer`` runs whatever gradient averaging the imported ``dalle`` does (to compare
commits, run it with ``PYTHONPATH=<other checkout>/src`` and a ``--label``); ``fsdp2`` runs the
same loop with ``shard`` (``dalle train --shard``: every block and the rest sharded with
``torch.distributed.fsdp.fully_shard``). Each run adds (or replaces) its row, by label, in the
JSON file. ``state_mib`` is the parameter, gradient and AdamW memory a rank holds (16 bytes a
local parameter); ``--dim`` and ``--depth`` grow the model until that shows in the RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from common import RESULTS, git_commit, header, write_json


def state_bytes(params) -> float:
    """MiB of this rank's own parameters, their gradients' room and AdamW's two moments (16
    bytes a parameter; a sharded parameter counts its local shard)."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
    return round(16 * local / 2**20, 2)


def worker(args: argparse.Namespace) -> None:
    import torch

    from dalle.config import TransformerConfig
    from dalle.models.dalle_transformer import DALLE
    from dalle.train import distributed
    from dalle.train.loop import Trainer
    from dalle.train.train_config import TransformerTrainConfig
    from dalle.train.transformer_trainer import DalleObjective

    torch.set_num_threads(args.threads)
    distributed.setup()
    cfg = TransformerConfig(text_vocab=512, text_len=16, image_vocab=512, image_grid=16,
                            dim=args.dim, depth=args.depth, heads=8,
                            attention=("full",) * args.depth)  # fmt: skip
    torch.manual_seed(0)
    model = DALLE(cfg)
    recipe = TransformerTrainConfig(steps=args.steps, batch_size=args.batch, caption_dropout=0.0)
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield (torch.randint(1, cfg.text_vocab, (args.batch, cfg.text_len), generator=g),
                   torch.randint(0, cfg.image_vocab, (args.batch, cfg.image_len), generator=g))  # fmt: skip

    out = Path(args.worker_out)
    run = out / "run"
    optim = replace(recipe.optim(), log_every=1)  # every step's elapsed_s in the log
    sharding = {"shard": True} if args.engine == "fsdp2" else {}  # older loops lack the option
    trainer = Trainer(model, DalleObjective(recipe), batches(), optim, run, **sharding)
    state = state_bytes(trainer.model.parameters())
    trainer.run([], progress=False)
    times = []
    if distributed.is_main():
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        times = [row["elapsed_s"] for row in log]
    rank = distributed.rank()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row: dict = {"rank": rank, "peak_rss_mib": round(peak_mib, 1), "state_mib": state}
    if times:  # rank 0 logs
        timed = times[args.warmup :]
        seconds = timed[-1] - timed[0]
        tokens = args.batch * (cfg.text_len + cfg.image_len) * (len(timed) - 1)
        row |= {"tokens_per_s": round(tokens / seconds, 1), "timed_steps": len(timed) - 1}
    (out / f"rank{rank}.json").write_text(json.dumps(row))
    distributed.barrier()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--dim", type=int, default=256, help="model width (M: 256)")
    parser.add_argument("--depth", type=int, default=4, help="blocks (M: 4)")
    parser.add_argument("--engine", choices=("trainer", "fsdp2"), default="trainer",
                        help="the library's training loop (whatever gradient averaging the "
                        "imported dalle does), or the same loop with shard (FSDP2)")  # fmt: skip
    parser.add_argument("--label", default=None, help="default: the engine")
    parser.add_argument("--json", type=Path, default=RESULTS / "distributed.json")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return 0

    import dalle

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(args.ranks), __file__, "--worker-out", tmp,
               "--threads", str(args.threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch),
               "--engine", args.engine, "--dim", str(args.dim), "--depth", str(args.depth)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    report = {
        **header("distributed", threads=args.threads),
        "label": args.label or args.engine,
        "engine": args.engine,
        "dalle": str(Path(dalle.__file__).parent),
        "dalle_commit": git_commit(Path(dalle.__file__).parent),
        "dim": args.dim,
        "depth": args.depth,
        "ranks": args.ranks,
        "global_batch": args.batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "tokens_per_s": ranks[0]["tokens_per_s"],
        "peak_rss_mib": [r["peak_rss_mib"] for r in ranks],
        "state_mib": [r["state_mib"] for r in ranks],
    }
    print(f"{report['label']}: {report['tokens_per_s']} tokens/s, peak RSS per rank "
          f"{report['peak_rss_mib']} MiB, parameter + optimizer state per rank "
          f"{report['state_mib']} MiB")  # fmt: skip
    # One file for the comparison: this run's row replaces the row of the same label.
    rows = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
    rows = [r for r in rows if r["label"] != report["label"]] + [report]
    write_json(args.json, {"benchmark": "distributed", "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
