"""Data parallelism: two gloo ranks under torchrun train exactly what one process trains on
the same global batch, with PyTorch's DistributedDataParallel and with FSDP2 (``--shard``),
with gradient accumulation (no gradient sync but for the last batch) and with activation
checkpointing; a sharded run killed with SIGKILL resumes bitwise from its DCP checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle.cli import main
from dalle.config import VAEConfig
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
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


SINGLE_PROCESS_ONLY = ("--activation-checkpointing", "--shard")  # the reference leaves these out
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_run(tmp_path: Path):
    """A tiny dVAE and its token file; ``args(out, options)`` the ``dalle train`` argv."""
    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(tmp_path / "vae")
    tokens = tmp_path / "tokens.safetensors"
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", "shapes", "--num", "32"]
    assert main([*argv, "--out", str(tokens)]) == 0

    def args(out: str, options: list[str], steps: int = 4) -> list[str]:
        a = ["train", "--vae", str(tmp_path / "vae"), "--tokens", str(tokens)]
        a += ["--out", str(tmp_path / out), "--steps", str(steps), "--batch-size", "8"]
        a += ["--caption-dropout", "0", "--save-every", str(steps)]
        # AdamW, so that the ranks' averaged gradients are compared exactly (--shard trains
        # with AdamW unless told otherwise, and is left to that default).
        if not {"--optimizer", "--shard"} & set(options):
            a += ["--optimizer", "adamw"]
        return a + ["--checkpoint-every", str(steps), *options]

    return args


def torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    """``dalle ARGV`` on two gloo ranks. A launch in which a rank aborted (SIGABRT, an
    intermittent gloo abort under FSDP2 not yet understood; see the closing note of the stop
    that added it) is tried once more from a clean folder; any other failure, or a second
    abort, fails the test."""
    cmd = [*TORCHRUN, "-m", "dalle", *argv]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "Signal 6 (SIGABRT)" in done.stderr:
        if "--resume" not in argv:  # a resumed run goes on from its newest checkpoint
            shutil.rmtree(argv[argv.index("--out") + 1], ignore_errors=True)
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    return done


def errors(done: subprocess.CompletedProcess) -> str:
    """The lines of a failed torchrun's stderr that say what went wrong on a rank."""
    said = ("Error", "terminate", "what()", "dalle")
    lines = [ln for ln in done.stderr.splitlines() if any(w in ln for w in said)]
    return "\n".join(lines[-20:]) or done.stderr[-2000:]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "transformer" / "model.safetensors"))


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--accumulate", "2"],
        ["--activation-checkpointing"],
        ["--shard"],
        ["--shard", "--accumulate", "2", "--activation-checkpointing"],
        ["--optimizer", "muon"],
    ],
    ids=str,
)
def test_two_gloo_ranks_equal_one_process(tmp_path, extra):
    args = tiny_run(tmp_path)
    # The reference: one process, unsharded, never checkpointing activations.
    assert main(args("one", [x for x in extra if x not in SINGLE_PROCESS_ONLY])) == 0
    done = torchrun(args("two", extra))
    assert done.returncode == 0, errors(done)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    # Muon orthogonalises each update in bf16 (torch.optim.Muon), so the ranks' last-bit
    # differences in the averaged gradient can move a weight by a bf16 step of lr 3e-3 a step.
    atol = 1e-4 if "muon" in extra else 1e-5
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)
    # Training moved the weights (the comparison is not between two untouched inits), and
    # only rank 0 logged.
    cfg = DALLE.load(tmp_path / "two" / "model" / "transformer").cfg
    torch.manual_seed(0)  # the trainer's initialisation (seed 0)
    init = DALLE(cfg).state_dict()
    assert not torch.equal(init["head.weight"], b["head.weight"])
    steps = (tmp_path / "two" / "metrics.jsonl").read_text().count('"step": 4,')
    assert steps == 1
    if "--shard" in extra:  # the run's model folder is a whole pipeline that generates
        checkpoints = tmp_path / "two" / "checkpoints"
        assert [p.name for p in checkpoints.iterdir()] == ["step_00000004.pt", "step_00000004.shards"]
        pipe = DallePipeline.from_pretrained(tmp_path / "two" / "model")
        assert pipe("a red circle", num_images=1, seed=0).images[0].size == (64, 64)


def test_sharded_run_killed_with_sigkill_resumes_bitwise(tmp_path, capsys):
    args = tiny_run(tmp_path)
    steps, every = 60, ["--checkpoint-every", "3", "--keep", "2"]
    whole = torchrun(args("whole", ["--shard"], steps))
    assert whole.returncode == 0, errors(whole)

    # Kill the whole torchrun process group once a sharded checkpoint is on disk.
    cut = subprocess.Popen(
        [*TORCHRUN, "-m", "dalle", *args("cut", ["--shard", *every], steps)], env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    checkpoints = tmp_path / "cut" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("step_*.pt")) and cut.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    # torchrun starts each rank in a session of its own: kill every process of the run, as a
    # machine that loses power would, and wait until none is left.
    procs = [cut.pid, *descendants(cut.pid)]
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert cut.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    while any(alive(pid) for pid in procs):
        assert time.monotonic() < deadline, "a killed rank is still running"
        time.sleep(0.05)
    assert not (tmp_path / "cut" / "model").exists()  # killed long before the end

    resumed = torchrun(args("cut", ["--shard", *every, "--resume"], steps))
    assert resumed.returncode == 0, errors(resumed)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Only the newest --keep checkpoints and their shard folders are left.
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["step_00000057.pt", "step_00000057.shards", "step_00000060.pt",
                     "step_00000060.shards"]  # fmt: skip
    # A sharded checkpoint is not resumed without --shard (nor a whole one with it).
    capsys.readouterr()
    assert main(args("cut", [*every, "--resume"], steps)) == 2
    assert "is sharded: resume it with --shard under torchrun" in capsys.readouterr().err


def test_two_gloo_ranks_on_a_time_limit_agree_on_the_re_planned_steps(tmp_path):
    """`--minutes` under torchrun: each rank measures its own step time, and the ranks take
    the smallest plan, so their all-reduces stay paired and the run ends (a rank that planned
    more steps than the other would wait for it forever)."""
    import json

    args = tiny_run(tmp_path)
    done = torchrun(args("timed", ["--minutes", "0.1"], steps=100_000))
    assert done.returncode == 0, errors(done)
    last = json.loads((tmp_path / "timed" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 35 <= last["step"] < 100_000  # re-planned, then ended
