"""Faults during training: a process killed with SIGKILL at random moments (during checkpoint
writes too) and resumed each time ends with the weights of a run that never stopped, and never
leaves a damaged newest checkpoint; Ctrl-C saves a checkpoint and exits cleanly; a full disk
while saving keeps the previous checkpoint.

The killed runs are real processes, each forked by a ``forkserver`` that imported torch once
(a fresh interpreter per run would spend two seconds importing): ``_child`` trains the tiny
transformer of ``test_checkpoint.py`` and sends ``ready`` before it trains, ``step N`` after
each step and ``fsync checkpoint`` when a checkpoint write reaches its fsync (``fsync other``
for other files), then pauses there briefly, so that a kill can land between writing the
temporary file and renaming it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dalle.cli import main
from dalle.train.checkpoint import CHECKPOINT_DIR, checkpoints
from dalle.train.train_config import CheckpointConfig
from test_checkpoint import CFG, TRAIN, _data

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses /proc/self/fd and /dev/full (Linux)"
)
STEPS = 60
EVERY = 2  # a checkpoint every other step: many writes to land a kill in
FSYNC_PAUSE = 0.02  # seconds the child waits inside each fsync of a checkpoint write
KILLS = 12
CHILD_TIMEOUT = 60.0


def _child(run: str, events: Connection) -> None:
    """The training process: resumes when ``run`` has a checkpoint, reports its progress on
    ``events``, and writes ``run/final.safetensors`` when all steps are done."""
    from dalle.data.tokens import token_batches
    from dalle.models.dalle_transformer import DALLE
    from dalle.train.loop import Callback
    from dalle.train.transformer_trainer import fit_transformer

    real_fsync = os.fsync

    def announced_fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.send("fsync checkpoint" if f"/{CHECKPOINT_DIR}/" in target else "fsync other")
        time.sleep(FSYNC_PAUSE)
        real_fsync(fd)

    os.fsync = announced_fsync  # what dalle.io calls between writing and renaming
    torch.manual_seed(0)
    model = DALLE(CFG)
    text, codes = _data()
    cfg = dataclasses.replace(TRAIN, steps=STEPS)
    batches = token_batches(text, codes, cfg.batch_size, cfg.seed)
    report = Callback(1, lambda step: events.send(f"step {step}"))
    resume = bool(checkpoints(Path(run)))
    events.send("ready")
    checkpoint = CheckpointConfig(every=EVERY, keep=2)
    fit_transformer(model, cfg, batches, Path(run), [report], False, checkpoint, resume)
    save_file(model.state_dict(), str(Path(run) / "final.safetensors"))


class Trainer:
    """One training process and the reading end of its event pipe."""

    def __init__(self, run: Path):
        ctx = multiprocessing.get_context("forkserver")
        self.events, writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child, args=(str(run), writer), daemon=True)
        self.process.start()
        writer.close()  # the child holds the only writer: its death reads as end of file

    def wait_for(self, event: str, count: int = 1) -> bool:
        """Read events until the ``count``-th ``event``; False when the process ended first."""
        seen = 0
        while self.events.poll(CHILD_TIMEOUT):
            try:
                message = self.events.recv()
            except EOFError:
                return False
            seen += message == event
            if seen == count:
                return True
        raise AssertionError(f"the training process sent no {event!r} in {CHILD_TIMEOUT} s")

    def finish(self) -> int | None:
        """Wait for the process to end; its exit code (negative: killed by that signal)."""
        self.process.join(CHILD_TIMEOUT)
        self.events.close()
        return self.process.exitcode


@pytest.fixture(scope="module")
def forkserver() -> None:
    """Training processes fork from a server that has torch and this module imported
    (``torch._dynamo`` too: the first optimizer of a process imports it, for a second)."""
    multiprocessing.set_forkserver_preload(["torch._dynamo", "dalle.train.transformer_trainer", "test_faults"])


def _newest_step_reads_whole(run: Path) -> int:
    """Every checkpoint on disk loads with weights_only=True; returns the newest step (0 if
    none). A half-written file must never carry a checkpoint's name."""
    steps = 0
    for path in checkpoints(run):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert set(state) >= {"model", "optimizer", "rng", "step"}, path
        assert path.name == f"step_{state['step']:08d}.pt"
        steps = state["step"]
    return steps


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(forkserver, tmp_path):
    whole = tmp_path / "whole"
    assert Trainer(whole).finish() == 0
    reference = load_file(str(whole / "final.safetensors"))

    run, rng = tmp_path / "cut", random.Random(9)
    kills = mid_write = newest = 0
    while kills < KILLS:
        trainer = Trainer(run)
        mode = kills % 3  # 0: a random moment; 1: inside a checkpoint's fsync; 2: just after
        assert trainer.wait_for("ready"), "the run finished before it could be killed"
        if mode == 0:
            time.sleep(rng.uniform(0.0, 0.12))
        else:
            writes = rng.randint(1, 2)
            assert trainer.wait_for("fsync checkpoint", writes), "finished before the kill"
            if mode == 2:
                time.sleep(rng.uniform(0.0, 2 * FSYNC_PAUSE))
        trainer.process.kill()
        assert trainer.finish() == -signal.SIGKILL
        kills += 1
        leftovers = list((run / CHECKPOINT_DIR).glob(".step_*.tmp"))
        mid_write += bool(leftovers)
        step = _newest_step_reads_whole(run)
        assert step >= newest, f"kill {kills}: the newest checkpoint went back to step {step}"
        newest = step
    assert mid_write >= 3, f"only {mid_write} of {KILLS} kills landed inside a checkpoint write"
    assert newest < STEPS  # the run was still unfinished after the last kill

    assert Trainer(run).finish() == 0
    resumed = load_file(str(run / "final.safetensors"))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert not list((run / CHECKPOINT_DIR).glob(".step_*.tmp"))  # the last saves cleaned up
    lines = (run / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(x)["step"] for x in lines]
    assert logged == sorted(set(logged)) and logged[-1] == STEPS


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler, even under a parent that ignores SIGINT (``nohup`` or a
    background job of a non-interactive shell, where the loop rightly leaves Ctrl-C alone)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _default_ctrl_c() -> None:
    """In a child before it starts Python: SIGINT at its default, so Python installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_between_an_update_and_the_step_count_still_resumes_exactly(
    tmp_path, ctrl_c_raises
):
    """SIGINT right after the optimizer has moved the weights of step 3: the loop finishes the
    step, saves it as step 3 and stops; resuming ends where an uninterrupted run ends."""
    from test_checkpoint import _equal, _run

    whole = _run(tmp_path / "whole")
    real_update, updates = torch.amp.GradScaler.update, []

    def update_then_ctrl_c(self: torch.amp.GradScaler, *args: object) -> None:
        real_update(self, *args)
        updates.append(1)
        if len(updates) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(torch.amp.GradScaler, "update", update_then_ctrl_c)
        _run(tmp_path / "cut")  # checkpoints every 2 steps
    assert [p.name for p in checkpoints(tmp_path / "cut")][-1] == "step_00000003.pt"
    assert _equal(whole, _run(tmp_path / "cut", resume=True))


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny dVAE folder and a token file of 16 shapes for ``dalle train``."""
    from dalle.config import VAEConfig
    from dalle.models.vae import DiscreteVAE

    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(root / "vae")
    tokens = root / "tokens.safetensors"
    argv = ["encode", "--vae", str(root / "vae"), "--data", "shapes", "--num", "16"]
    assert main([*argv, "--out", str(tokens)]) == 0
    return {"vae": root / "vae", "tokens": tokens}


def _train_argv(inputs: dict[str, Path], out: Path, steps: int, every: int) -> list[str]:
    argv = ["train", "--vae", str(inputs["vae"]), "--tokens", str(inputs["tokens"])]
    argv += ["--out", str(out), "--steps", str(steps), "--batch-size", "4"]
    return argv + ["--checkpoint-every", str(every), "--save-every", str(steps)]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(cli_inputs, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "dalle", *_train_argv(cli_inputs, run, 5000, 1000)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_ctrl_c
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (metrics.is_file() and metrics.read_text().strip()):  # 10 steps are done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "dalle train: interrupted" in err.splitlines()
    saved = int(out.split("interrupted; saved step ")[1].split(",")[0])
    assert saved >= 10 and [p.name for p in checkpoints(run)] == [f"step_{saved:08d}.pt"]
    state = torch.load(checkpoints(run)[0], map_location="cpu", weights_only=True)
    assert state["step"] == saved
    assert not (run / "model").exists()  # no model folder that looks like a finished run


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(cli_inputs, tmp_path, capsys):
    """The third checkpoint write hits ENOSPC (its file descriptor points at /dev/full): the
    command fails in one line, the earlier checkpoints stay whole, no temporary file is left,
    and ``--resume`` then ends where an uninterrupted run ends."""
    from dalle.models.saving import WEIGHTS_FILE

    whole = tmp_path / "whole"
    assert main(_train_argv(cli_inputs, whole, 8, 2)) == 0
    run = tmp_path / "run"
    real_mkstemp, writes = tempfile.mkstemp, []

    def full_disk_mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if Path(name).parent.name == CHECKPOINT_DIR:
            writes.append(name)
            if len(writes) == 3:
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, fd)  # every write to the temporary file now fails with ENOSPC
                os.close(full)
        return fd, name

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkstemp", full_disk_mkstemp)
        assert main(_train_argv(cli_inputs, run, 8, 2)) == 2
    err = capsys.readouterr().err  # the progress bar, then one line
    assert "Traceback" not in err
    assert err.splitlines()[-1].endswith(f"step_00000006.pt: {os.strerror(errno.ENOSPC)}"), err
    assert [p.name for p in checkpoints(run)] == ["step_00000002.pt", "step_00000004.pt"]
    assert _newest_step_reads_whole(run) == 4
    assert not list((run / CHECKPOINT_DIR).glob(".*"))  # the failed write cleaned up after itself
    assert main([*_train_argv(cli_inputs, run, 8, 2), "--resume"]) == 0
    final = (run / "model" / "transformer" / WEIGHTS_FILE).read_bytes()
    assert final == (whole / "model" / "transformer" / WEIGHTS_FILE).read_bytes()
