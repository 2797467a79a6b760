"""Data parallelism: two gloo ranks under torchrun (PyTorch's DistributedDataParallel) train
exactly what one process trains on the same global batch, with gradient accumulation (DDP's
no_sync for all but the last batch) and with activation checkpointing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dalle.cli import main
from dalle.config import VAEConfig
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.train.distributed import shard


def test_shard_splits_every_element_of_a_batch():
    batch = {"image": torch.arange(8).view(4, 2), "caption": ["a", "b", "c", "d"]}
    got = shard(batch, 1, 2)
    assert torch.equal(got["image"], torch.tensor([[4, 5], [6, 7]])) and got["caption"] == [
        "c",
        "d",
    ]
    text, codes = shard((torch.arange(6), torch.arange(6) * 10), 0, 3)
    assert text.tolist() == [0, 1] and codes.tolist() == [0, 10]
    with pytest.raises(ValueError, match="does not split evenly over 4"):
        shard(torch.zeros(6), 0, 4)


@pytest.mark.parametrize(
    "extra", [[], ["--accumulate", "2"], ["--activation-checkpointing"]], ids=str
)
def test_two_gloo_ranks_equal_one_process(tmp_path, extra):
    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(tmp_path / "vae")
    tokens = tmp_path / "tokens.safetensors"
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", "shapes", "--num", "32"]
    assert main([*argv, "--out", str(tokens)]) == 0

    def args(out: str, options: list[str]) -> list[str]:
        a = ["train", "--vae", str(tmp_path / "vae"), "--tokens", str(tokens)]
        a += ["--out", str(tmp_path / out), "--steps", "4", "--batch-size", "8"]
        a += ["--caption-dropout", "0", "--save-every", "4", "--checkpoint-every", "4"]
        return a + options

    # The reference: one process, never checkpointing activations.
    assert main(args("one", [x for x in extra if x != "--activation-checkpointing"])) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*cmd, "-m", "dalle", *args("two", extra)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "model" / "transformer" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "transformer" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    # Training moved the weights (the comparison is not between two untouched inits), and
    # only rank 0 logged.
    cfg = DALLE.load(tmp_path / "two" / "model" / "transformer").cfg
    torch.manual_seed(0)  # the trainer's initialisation (seed 0)
    init = DALLE(cfg).state_dict()
    assert not torch.equal(init["head.weight"], b["head.weight"])
    steps = (tmp_path / "two" / "metrics.jsonl").read_text().count('"step": 4,')
    assert steps == 1
