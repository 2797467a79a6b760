"""Tiny pipelines with random weights for the ``dalle serve`` tests, pipelines that misbehave
on purpose (wait at a gate, sample slowly, fail on a given prompt), and a real server on
loopback for the tests that need one (a disconnect, a browser)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from dalle.config import TransformerConfig, VAEConfig
from dalle.data.shapes import make_sample
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.tokenizer import Tokenizer

EXAMPLES = [make_sample(0, "train", i).caption for i in range(8)]


def tiny_parts(grid: int = 4) -> tuple[Tokenizer, DiscreteVAE, DALLE]:
    """A tokenizer, a dVAE drawing 64 px from ``grid`` x ``grid`` codes, a 1-layer transformer."""
    torch.manual_seed(0)
    tok = Tokenizer.train([make_sample(0, "train", i).caption for i in range(200)], 300)
    vae = DiscreteVAE(VAEConfig(downsample=64 // grid, vocab_size=16, n_hid=8, n_init=8))
    cfg = TransformerConfig(text_vocab=tok.vocab_size, text_len=32, image_vocab=16, image_grid=grid,
                            dim=32, depth=1, heads=2, attention=("full",))  # fmt: skip
    return tok, vae, DALLE(cfg)


class ScriptedPipeline(DallePipeline):
    """A real pipeline that can wait at ``gate`` before sampling, sleep ``delay`` seconds per
    sampled position, and raise RuntimeError for the prompt ``fail_on``."""

    gate: threading.Event | None = None
    delay: float = 0.0
    fail_on: str | None = None

    def __call__(self, prompts: Any, *args: Any, callback: Any = None, **kwargs: Any):
        if self.gate is not None and not self.gate.wait(30):
            raise RuntimeError("the test never opened the gate")
        if prompts == self.fail_on:
            raise RuntimeError("boom")

        def slow(done: int, total: int) -> None:
            time.sleep(self.delay)
            if callback is not None:
                callback(done, total)

        return super().__call__(prompts, *args, callback=slow, **kwargs)


def scripted(grid: int = 4, **behaviour: Any) -> ScriptedPipeline:
    pipe = ScriptedPipeline(*tiny_parts(grid), examples=EXAMPLES)
    for key, value in behaviour.items():
        setattr(pipe, key, value)
    return pipe


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread: yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
