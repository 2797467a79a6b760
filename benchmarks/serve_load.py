"""Load test of ``dalle serve`` on loopback: many concurrent clients against one server process.

    python benchmarks/serve_load.py [--clients 32] [--requests 200] [--seconds 60] [--json FILE]

Saves a tiny randomly initialised model (8x8 codes of 64, dim 64, depth 2), starts
``python -m dalle serve`` on a free 127.0.0.1 port (queue of 8, 20 s limit, ``--threads``
torch threads) and sends at most ``--requests`` requests from ``--clients`` clients within
``--seconds``: mostly ``/v1/generate`` with 1-4 images, some streams, some read a stream's first
event and hang up, some invalid bodies. A client told 429 waits ``Retry-After`` (at most 2 s)
before its next request; each request is sent once. It checks that every answer is 200, 422 or
429, none hangs past its 30 s client timeout, every stream ends with its result, the server is
healthy afterwards and its memory stays bounded (resident set sampled every 0.1 s). Baseline:
the same requests through the pipeline in this process, one at a time. Prints a table, writes
JSON (machine, torch, threads, config, figures) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, header, write_json

DEFAULT_JSON = RESULTS / "serve_load.json"
QUEUE_SIZE, TIMEOUT_S, CLIENT_TIMEOUT_S = 8, 20.0, 30.0
RSS_GROWTH_LIMIT_MIB = 200.0
KINDS = ("generate", "stream", "abandon", "invalid")


@dataclass
class Record:
    kind: str  # generate | stream | abandon | invalid
    status: int | None  # None: no answer (timeout or connection error)
    seconds: float
    images: int = 0
    retry_after: float = 0.0
    error: str = ""  # why a 200 is not what it should be (an image count, a stream's end)


@dataclass
class Load:
    budget: int
    deadline: float
    records: list[Record] = field(default_factory=list)
    sent: int = 0

    def take(self) -> int | None:
        if self.sent >= self.budget or time.monotonic() >= self.deadline:
            return None
        self.sent += 1
        return self.sent - 1


def save_model(folder: Path) -> None:
    import torch

    from dalle.config import TransformerConfig, VAEConfig
    from dalle.data.shapes import make_sample
    from dalle.models.dalle_transformer import DALLE
    from dalle.models.vae import DiscreteVAE
    from dalle.pipeline import DallePipeline
    from dalle.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.train([make_sample(0, "train", i).caption for i in range(300)], 400)
    vae = DiscreteVAE(VAEConfig(downsample=8, vocab_size=64, n_hid=8, n_init=16))
    cfg = TransformerConfig(text_vocab=tok.vocab_size, text_len=32, image_vocab=64, image_grid=8,
                            dim=64, depth=2, heads=4, attention=("row", "column"))  # fmt: skip
    DallePipeline(tok, vae, DALLE(cfg)).save_pretrained(folder)


def request_body(i: int, rng: random.Random) -> tuple[str, dict]:
    """The i-th request: its kind and JSON body."""
    from dalle.data.shapes import make_sample

    roll = rng.random()
    body = {
        "prompt": make_sample(1, "train", i).caption,
        "num_images": rng.randint(1, 4),
        "seed": i,
    }
    if roll < 0.10:
        return "invalid", {**body, "num_images": rng.choice([0, 17, "four"])}
    if roll < 0.15:
        return "abandon", body
    if roll < 0.30:
        return "stream", body
    return "generate", body


def rss_mib(pid: int) -> float:
    """Resident set of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


async def one(client, kind: str, body: dict) -> Record:
    import httpx

    t0 = time.monotonic()
    images, error = 0, ""
    try:
        if kind in ("generate", "invalid"):
            r = await client.post("/v1/generate", json=body)
            if r.status_code == 200:
                images = len(r.json()["images"])
                error = "" if images == body["num_images"] else f"{images} images"
        else:
            async with client.stream("POST", "/v1/generate/stream", json=body) as r:
                last = data = ""
                async for line in r.aiter_lines():
                    last = line[7:] if line.startswith("event: ") else last
                    data = line[6:] if line.startswith("data: ") else data
                    if kind == "abandon" and last:
                        break  # hang up after the first event
                if r.status_code == 200 and kind == "stream":
                    images = len(json.loads(data)["images"]) if last == "result" else 0
                    error = "" if images == body["num_images"] else f"ended with {last!r}"
    except httpx.HTTPError as e:
        return Record(kind, None, time.monotonic() - t0, error=e.__class__.__name__)
    wait = float(r.headers.get("Retry-After", 0))
    return Record(kind, r.status_code, time.monotonic() - t0, images, wait, error)


async def client_loop(base: str, load: Load, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    timeout = httpx.Timeout(CLIENT_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        while (i := load.take()) is not None:
            kind, body = request_body(i, rng)
            record = await one(client, kind, body)
            load.records.append(record)
            if record.status == 429:
                await asyncio.sleep(min(2.0, record.retry_after or 1.0))


async def sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_mib(pid))
        await asyncio.sleep(0.1)


async def run_load(base: str, pid: int, clients: int, budget: int, seconds: float):
    load = Load(budget, time.monotonic() + seconds)
    samples: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, samples, stop))
    t0 = time.monotonic()
    await asyncio.gather(*(client_loop(base, load, seed) for seed in range(clients)))
    wall = time.monotonic() - t0
    stop.set()
    await sampler
    return load.records, wall, samples


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(model: Path, n: int) -> float:
    """Images per second through the pipeline in this process, the load's own request mix."""
    from dalle.pipeline import DallePipeline

    pipe = DallePipeline.from_pretrained(model)
    rng = random.Random(0)
    bodies = [b for k, b in (request_body(i, rng) for i in range(n)) if k != "invalid"]
    pipe("warm up", num_images=1)
    t0 = time.monotonic()
    images = 0
    for b in bodies:
        images += len(pipe(b["prompt"], num_images=b["num_images"], seed=b["seed"]).images)
    return images / (time.monotonic() - t0)


def wait_healthy(base: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    import httpx

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /v1/health within {seconds:g} s")


def drained(base: str, seconds: float = 10.0) -> dict:
    """/v1/health once the queue is empty (hung-up streams leave cancelled jobs behind)."""
    import httpx

    end = time.monotonic() + seconds
    while True:
        health = httpx.get(base + "/v1/health", timeout=5).json()
        if health["queue"]["running"] + health["queue"]["waiting"] == 0 or time.monotonic() > end:
            return health
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200, help="at most this many (<= 200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most this long (<= 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    if not (1 <= args.requests <= 200 and 0 < args.seconds <= 60 and args.clients >= 1):
        parser.error("the load is bounded: 1-200 requests, at most 60 s, at least 1 client")

    import httpx
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        save_model(model)
        direct = baseline(model, 24)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "dalle", "serve", "--model", str(model), "--port", str(port),
               "--queue-size", str(QUEUE_SIZE), "--timeout", str(TIMEOUT_S),
               "--log-level", "warning"]  # fmt: skip
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        try:
            wait_healthy(base, server)
            for _ in range(3):  # warm up: first calls allocate caches and load lazy modules
                httpx.post(base + "/v1/generate", json={"prompt": "warm up"}, timeout=30)
            rss_before = rss_mib(server.pid)
            records, wall, samples = asyncio.run(
                run_load(base, server.pid, args.clients, args.requests, args.seconds)
            )
            healthy = drained(base)
            rss_after = rss_mib(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    ok_latency = [r.seconds for r in records if r.status == 200 and r.kind != "abandon"]
    all_latency = [r.seconds for r in records]
    served = sum(r.images for r in records) / wall
    bad = [r for r in records if r.status not in (200, 422, 429) or r.error]
    rss_peak = max(samples + [rss_after])
    checks = {
        "only_200_422_429": all(r.status in (200, 422, 429) for r in records),
        "none_hung": all(r.status is not None for r in records),
        "streams_ended_with_result": not any(r.error for r in records),
        "invalid_bodies_422": all(r.status == 422 for r in records if r.kind == "invalid"),
        "healthy_after": healthy["status"] == "ok" and healthy["queue"]["running"] == 0,
        "rss_bounded": rss_peak - rss_before < RSS_GROWTH_LIMIT_MIB,
    }
    result = {
        **header("serve_load", threads=args.threads),
        "config": {
            "clients": args.clients,
            "max_requests": args.requests,
            "max_seconds": args.seconds,
            "queue_size": QUEUE_SIZE,
            "timeout_s": TIMEOUT_S,
            "model": "tiny random: 8x8 codes of 64, dim 64, depth 2, 64 px",
        },
        "requests": len(records),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(records) / wall, 2),
        "ok_requests_per_s": round(sum(r.status == 200 for r in records) / wall, 2),
        "statuses": statuses,
        "kinds": {k: sum(r.kind == k for r in records) for k in KINDS},
        "latency_s": {
            "all_p50": round(percentile(all_latency, 0.5), 4),
            "all_p95": round(percentile(all_latency, 0.95), 4),
            "ok_p50": round(percentile(ok_latency, 0.5), 4),
            "ok_p95": round(percentile(ok_latency, 0.95), 4),
            "ok_max": round(max(ok_latency, default=float("nan")), 4),
        },
        "images_per_s": {
            "served": round(served, 2),
            "direct": round(direct, 2),
            "ratio": round(served / direct, 3),
        },
        "rss_mib": {
            "before": round(rss_before, 1),
            "peak": round(rss_peak, 1),
            "after": round(rss_after, 1),
        },
        "checks": checks,
        "failures": [f"{r.kind} {r.status} {r.error}" for r in bad[:20]],
    }
    write_json(args.json, result, indent=1)
    lat, rss = result["latency_s"], result["rss_mib"]
    rows = [
        ("requests (wall)", f"{len(records)} in {wall:.1f} s"),
        (
            "requests/s, all / 200 only",
            f"{result['requests_per_s']} / {result['ok_requests_per_s']}",
        ),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))),
        ("latency p50 / p95, all", f"{lat['all_p50'] * 1000:.0f} / {lat['all_p95'] * 1000:.0f} ms"),
        ("latency p50 / p95, 200", f"{lat['ok_p50'] * 1000:.0f} / {lat['ok_p95'] * 1000:.0f} ms"),
        ("images/s served / direct", f"{served:.1f} / {direct:.1f} ({served / direct:.2f}x)"),
        ("server RSS before/peak/after", f"{rss['before']} / {rss['peak']} / {rss['after']} MiB"),
    ] + [(f"check {name}", "ok" if passed else "FAILED") for name, passed in checks.items()]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"wrote {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
