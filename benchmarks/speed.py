"""Speed of sampling and training, in one run: image tokens/s, training tokens/s, dVAE images/s,
the machine's fp32 matmul ceiling and each training figure as model-FLOPs utilisation, and,
when it is installed (``benchmarks/requirements-peers.txt``), the same figures for the peer
DALLE-pytorch 1.6.6 built with our dimensions, side by side with the ratio ours / theirs.

    python benchmarks/speed.py [--repeats N] [--quick] [--no-peer] [--compile] [--bf16]
        [--json FILE]

Model (the issue's reference): dim 256, depth 4, 8 heads of 32, full causal attention, GELU
MLP of width 1024, 16 text tokens, 512 codes; config S has 8x8 image tokens, M 16x16.
Sampling is timed at batch 1 and 8, with the KV cache and (once, for reference) without,
with and without classifier-free guidance (which doubles the rows). Training is forward +
backward + AdamW (fused where torch has it, as the trainer uses it) at batch 32 from token
codes; the dVAE is the ``tiny`` preset trained with the paper's relaxed ELBO at batch 32 on
64 px images. Medians of ``--repeats`` timings after one warm-up.

``--compile`` also times, in the same run, cached sampling through the compiled decode step
(``Sampler.sample(compile=True)``) and the training step through the compiled loss
(``DalleObjective(compile=True)``), each beside its eager figure; the first call of each
(compiling included) is reported apart as ``warmup_s``, never inside the medians.

``--bf16`` also times training under bf16 autocast (eager, and compiled with ``--compile``),
ours and the peer's, and measures the bf16 matmul ceiling the same way as the fp32 one: a bf16
training figure's MFU is against the bf16 ceiling (the FLOPs it could have had), never the
fp32 one.

FLOPs per token, forward, counted as multiply-adds x 2: ``2 * N`` for the ``N`` weights of the
blocks and the image head, plus ``2 * L * T * d`` for attention scores and mixing over the
causal average context ``T / 2`` (both QK^T and AV); training is 3x forward.

The peer (``benchmarks/peers.py``, which lists the architectural differences and counts its
FLOPs the same way) is timed at batch 8 on its default sampling path (``generate_images``
without guidance, which recomputes the prefix every step), with guidance and its cache, and
in training at batch 32 from codes. Each ratio is given in tokens/s and in FLOP/s (the tokens
ratio times ours / theirs FLOPs per token). Importing it needs a stub for torchvision, which
the run reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from common import RESULTS, header, write_json

DEFAULT_JSON = RESULTS / "speed.json"


TRAINING_KEYS = {  # a training figure's name in the comparison -> its report entry
    "compiled": "training_compiled",
    "bf16": "training_bf16",
    "bf16 compiled": "training_bf16_compiled",
}
WARMUP_S: list[float] = []  # the seconds of the last median_time call's warm-up


def median_time(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    fn()  # warm-up (and, compiled, the compile)
    WARMUP_S[:] = [time.perf_counter() - t0]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_sampling(
    model, text, repeats: int, cond_scale: float = 1.0, use_cache: bool = True,
    compile: bool = False,
) -> float:  # fmt: skip
    """Median seconds to draw every image code for ``text`` (same seed each time)."""
    import torch

    from dalle.sampler import Sampler

    g = torch.Generator()

    def draw():
        with torch.no_grad():
            Sampler(cond_scale=cond_scale).sample(model, text, generator=g.manual_seed(0),
                                                  use_cache=use_cache, compile=compile)  # fmt: skip

    return median_time(draw, repeats)


def time_step(model, objective, batch, repeats: int, bf16: bool = False) -> float:
    """Median seconds of one forward + backward + AdamW step of ``objective`` on ``batch``
    (the forward under bf16 autocast with ``bf16``, as the trainer runs ``precision="bf16"``)."""
    import torch

    from dalle.train.optimizer import fusable

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fusable(model))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = objective(model, batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_time(step, repeats)


def compare_peer(report: dict, configs: dict, repeats: int, flops_per_token) -> dict:
    """Time DALLE-pytorch on ``configs`` and print it beside our figures in ``report``.

    Returns the JSON entry: version, import notes, architectural differences, their figures
    (with forward FLOPs per token of both models) and, per figure, ours, theirs, ``ratio``
    (ours / theirs in tokens/s) and ``ratio_flops`` (the same in model FLOP/s)."""
    import peers

    try:
        peer = peers.load_peer()
    except ImportError as e:  # installed, but not all of requirements-peers.txt
        print(f"{peers.NAME} does not import ({e}): see benchmarks/requirements-peers.txt")
        return {"name": peers.NAME, "installed": False, "error": str(e)}
    if peer is None:
        print(peers.NOT_INSTALLED)
        return {"name": peers.NAME, "installed": False}
    for note in peer.notes:
        print(f"note: {note}")
    bf16 = "training_bf16" in report
    theirs = peers.measure(peer, configs, repeats, median_time, time_step, bf16)
    pairs = {  # our sampling figure (None: training), their figure
        "sampling batch 8, each default path": ("batch 8 cache", "default"),
        "sampling batch 8, no cache": ("batch 8 no cache", "default"),
        "sampling batch 8, guided + cache": ("batch 8 guided cache", "guided cache"),
        "training batch 32": (None, "training"),
    }
    if "training_compiled" in report:  # --compile: our compiled figures against the same
        pairs |= {
            "sampling batch 8, compiled": ("batch 8 cache compiled", "default"),
            "sampling batch 8, guided + cache, compiled": (
                "batch 8 guided cache compiled", "guided cache"),
            "training batch 32, compiled": ("compiled", "training"),
        }  # fmt: skip
    if bf16:  # --bf16: ours against their fp32 default and their bf16 autocast
        for key in ("bf16", "bf16 compiled") if "training_bf16_compiled" in report else ("bf16",):
            pairs[f"training batch 32, {key} vs their fp32"] = (key, "training")
            pairs[f"training batch 32, {key} vs their bf16"] = (key, "training bf16")
    comparison = {}
    print(f"{peers.NAME} {peer.version} (tokens/s)")
    print(f"{'':<46} {'ours':>9} {'theirs':>9} {'ours/theirs':>12} {'in FLOP/s':>10}")
    for name, cfg in configs.items():
        t = theirs[name]
        ours_flops, their_flops = flops_per_token(cfg), t["flops_per_token_forward"]
        t["ours_flops_per_token_forward"] = round(ours_flops)
        t["training_gflops"] = round(3 * their_flops * t["training"] / 1e9, 1)
        t["training_mfu"] = round(t["training_gflops"] / report["matmul_gflops"], 3)
        if bf16:
            t["training_bf16_mfu"] = round(
                3 * their_flops * t["training bf16"] / 1e9 / report["matmul_gflops_bf16"], 3
            )
        for label, (key, their_key) in pairs.items():
            if key is None or key in TRAINING_KEYS:
                training = report["training" if key is None else TRAINING_KEYS[key]]
                ours = training[name]["tokens_per_s"]
            else:
                ours = report["sampling"][f"{name} {key}"]
            ratio = ours / t[their_key]
            row = {"ours": ours, "theirs": t[their_key], "ratio": round(ratio, 2),
                   "ratio_flops": round(ratio * ours_flops / their_flops, 2)}  # fmt: skip
            comparison[f"{name} {label}"] = row
            print(f"{name + ' ' + label:<46} {ours:>9} {row['theirs']:>9} "
                  f"{row['ratio']:>12.2f} {row['ratio_flops']:>10.2f}")  # fmt: skip
    for name, t in theirs.items():
        print(
            f"{name}: forward FLOPs/token ours {t['ours_flops_per_token_forward'] / 1e6:.2f} M, "
            f"theirs {t['flops_per_token_forward'] / 1e6:.2f} M; their training "
            f"{t['training_gflops']} GFLOP/s, MFU {t['training_mfu']:.0%}"
        )
    for aspect, text in peers.DIFFERENCES.items():
        print(f"difference, {aspect}: {text}")
    return {
        "name": peers.NAME, "installed": True, "version": peer.version, "notes": peer.notes,
        "differences": peers.DIFFERENCES, "theirs": theirs, "comparison": comparison,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat, no JSON")
    parser.add_argument("--no-peer", action="store_true", help="skip DALLE-pytorch")
    parser.add_argument("--compile", action="store_true",
                        help="also time compiled sampling and training (torch.compile)")  # fmt: skip
    parser.add_argument("--bf16", action="store_true",
                        help="also time training under bf16 autocast, ours and the peer's")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from dalle.config import VAE_PRESETS, TransformerConfig, to_dict
    from dalle.models.dalle_transformer import DALLE
    from dalle.models.vae import DiscreteVAE
    from dalle.train.train_config import TransformerTrainConfig, VAETrainConfig
    from dalle.train.transformer_trainer import DalleObjective
    from dalle.train.vae_trainer import VAEObjective

    repeats = 1 if args.quick else args.repeats
    base = TransformerConfig(
        text_vocab=512, text_len=16, image_vocab=512, image_grid=16, dim=256, depth=4, heads=8,
        attention=("full",) * 4,
    )  # fmt: skip
    configs = {"S": dataclasses.replace(base, image_grid=8), "M": base}
    if args.quick:
        configs = {
            "S": dataclasses.replace(base, image_grid=2),
            "M": dataclasses.replace(base, image_grid=4),
        }
    report: dict = {
        **header("speed"),
        "repeats": repeats,
        "model": to_dict(base),
    }

    # The machine's ceiling: fp32 matmul, 1024^3, the best of 20 after 3 warm-ups (a ceiling
    # is what the machine can reach; the median is reported beside it).
    n = 256 if args.quick else 1024

    def matmul_times(dtype: torch.dtype) -> list[float]:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        c = torch.empty(n, n, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=c)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - t0)
        return times

    times = matmul_times(torch.float32)
    ceiling = 2 * n**3 / min(times) / 1e9
    report["matmul_gflops"] = round(ceiling, 1)
    report["matmul_gflops_median"] = round(2 * n**3 / statistics.median(times) / 1e9, 1)
    if args.bf16:
        report["matmul_gflops_bf16"] = round(2 * n**3 / min(matmul_times(torch.bfloat16)) / 1e9, 1)

    def flops_per_token(cfg: TransformerConfig) -> float:
        block = 12 * cfg.dim**2 + 13 * cfg.dim  # qkv, proj, 2 MLP layers (+ biases, norms)
        weights = cfg.depth * block + cfg.dim * cfg.image_vocab
        return 2 * weights + 2 * cfg.depth * cfg.seq_len * cfg.dim

    report["sampling"], report["training"] = {}, {}
    if args.compile:
        report["training_compiled"], report["warmup_s"] = {}, {}
    kinds = [(False, False)] + ([(True, False)] if args.compile else [])
    if args.bf16:
        report["training_bf16"] = {}
        kinds.append((False, True))
        if args.compile:
            report["training_bf16_compiled"] = {}
            kinds.append((True, True))
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = DALLE(cfg).eval()
        for batch in (1, 8):
            text = torch.randint(1, cfg.text_vocab, (batch, cfg.text_len))
            for guided in (False, True):
                cases = [("cache", True, False)]
                cases += [("cache compiled", True, True)] if args.compile else []
                cases += [("no cache", False, False)] if batch == 8 and not guided else []
                for label, cache, compiled in cases:
                    scale = 3.0 if guided else 1.0
                    sec = time_sampling(
                        model, text, repeats if cache else 1, scale, cache, compiled
                    )
                    key = f"{name} batch {batch}{' guided' if guided else ''} {label}"
                    report["sampling"][key] = round(batch * cfg.image_len / sec, 1)
                    if compiled:  # the first call: compiling (once per batch-1 / batch > 1)
                        report["warmup_s"][key] = round(WARMUP_S[0], 2)
        # Training: forward + backward + AdamW at batch 32 from codes.
        text = torch.randint(1, cfg.text_vocab, (32, cfg.text_len))
        codes = torch.randint(0, cfg.image_vocab, (32, cfg.image_len))
        for compiled, bf16 in kinds:
            objective = DalleObjective(TransformerTrainConfig(caption_dropout=0.0),
                                       compile=compiled)  # fmt: skip
            sec = time_step(model, objective, (text, codes), repeats, bf16)
            tokens = 32 * cfg.seq_len / sec
            achieved = 3 * flops_per_token(cfg) * tokens / 1e9  # the same FLOPs, compiled or not
            entry = "training" + ("_bf16" if bf16 else "") + ("_compiled" if compiled else "")
            peak = report["matmul_gflops_bf16"] if bf16 else ceiling
            report[entry][name] = {
                "tokens_per_s": round(tokens),
                "gflops": round(achieved, 1),
                "mfu": round(achieved / peak, 3),
                "flops_per_token_forward": round(flops_per_token(cfg)),
            }
            if compiled:
                report["warmup_s"][f"{name} {entry.replace('_', ' ')}"] = round(WARMUP_S[0], 2)

    # Sampling time against image tokens, with the cache, batch 8.
    report["sampling_scaling"] = {}
    grids = (2, 4) if args.quick else (8, 16, 32)
    for grid in grids:
        cfg = dataclasses.replace(base, image_grid=grid)
        torch.manual_seed(0)
        model = DALLE(cfg).eval()
        text = torch.randint(1, cfg.text_vocab, (8, cfg.text_len))
        sec = time_sampling(model, text, 1 if grid == 32 else repeats)
        report["sampling_scaling"][str(grid * grid)] = {
            "seconds": round(sec, 2),
            "tokens_per_s": round(8 * grid * grid / sec, 1),
        }

    # The dVAE: tiny preset, relaxed ELBO, batch 32.
    torch.manual_seed(0)
    vae = DiscreteVAE(VAE_PRESETS["shapes"])
    objective = VAEObjective(VAETrainConfig(warm_start=0.0))
    sec = time_step(vae, objective, torch.rand(32, 3, 64, 64), repeats)
    report["vae_images_per_s"] = round(32 / sec, 1)

    print(
        f"fp32 matmul {n}^3: best {ceiling:.1f} GFLOP/s, median "
        f"{report['matmul_gflops_median']} ({torch.get_num_threads()} threads)"
    )
    print(f"{'sampling (image tokens/s)':<34} {'value':>10}")
    for key, value in report["sampling"].items():
        print(f"{key:<34} {value:>10}")
    if args.bf16:
        print(f"bf16 matmul {n}^3: best {report['matmul_gflops_bf16']} GFLOP/s")
    for label in ("training", "training_compiled", "training_bf16", "training_bf16_compiled"):
        for name, r in report.get(label, {}).items():
            print(
                f"{label.replace('_', ' ')} {name}, batch 32: {r['tokens_per_s']} tokens/s, "
                f"{r['gflops']} GFLOP/s, MFU {r['mfu']:.0%}"
            )
    for key, sec in report.get("warmup_s", {}).items():
        print(f"first call, compiling included: {key} {sec} s")
    for tokens, r in report["sampling_scaling"].items():
        print(
            f"sampling {tokens:>5} image tokens, batch 8, cache: {r['seconds']} s ({r['tokens_per_s']} tokens/s)"
        )
    print(f"dVAE tiny, ELBO, batch 32: {report['vae_images_per_s']} images/s")
    if not args.no_peer:
        report["peer"] = compare_peer(report, configs, repeats, flops_per_token)
    out = args.json or (None if args.quick else DEFAULT_JSON)
    if out is not None:
        write_json(out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
