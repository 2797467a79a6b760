"""Training checkpoints: a run stopped and resumed ends bit-identical to one that never stopped;
a damaged newest checkpoint falls back to the one before; only the newest K are kept."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.config import TransformerConfig, to_dict
from dalle.data.tokens import token_batches
from dalle.models.dalle_transformer import DALLE
from dalle.train.checkpoint import checkpoints, load_latest
from dalle.train.train_config import CheckpointConfig, TransformerTrainConfig
from dalle.train.transformer_trainer import fit_transformer

CFG = TransformerConfig(text_vocab=20, text_len=4, image_vocab=8, image_grid=2, dim=16,
                        depth=1, heads=2, dropout=0.1, attention=("full",))  # fmt: skip
TRAIN = TransformerTrainConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, caption_dropout=0.5)
ADAMW = dataclasses.replace(TRAIN, optimizer="adamw")


class Stop(Exception):
    pass


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 20, (24, 4), generator=g), torch.randint(0, 8, (24, 4), generator=g)


def _run(
    run_dir: Path, stop_at: int | None = None, resume: bool = False, train=TRAIN
) -> DALLE:
    """Train a fresh model (init seed 0) for ``train.steps``; ``stop_at`` raises after that step."""
    from dalle.train.loop import Callback

    torch.manual_seed(0)
    model = DALLE(CFG)
    text, codes = _data()

    def stop(step: int) -> None:
        if step == stop_at:
            raise Stop

    callbacks = [Callback(1, stop)] if stop_at else []
    batches = token_batches(text, codes, train.batch_size, train.seed)
    fit_transformer(model, train, batches, run_dir, callbacks, False, CheckpointConfig(every=2), resume)
    return model


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    whole = _run(tmp_path / "whole")
    with pytest.raises(Stop):
        _run(tmp_path / "cut", stop_at=5)  # checkpoints at 2 and 4; step 5 is lost
    assert [p.name for p in checkpoints(tmp_path / "cut")] == [
        "step_00000002.pt",
        "step_00000004.pt",
    ]
    resumed = _run(tmp_path / "cut", resume=True)
    assert _equal(whole, resumed)
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps))  # no step logged twice


def test_an_adamw_run_resumes_bit_identically(tmp_path):
    whole = _run(tmp_path / "whole", train=ADAMW)
    assert TRAIN.optimizer == "muon" and not _equal(whole, _run(tmp_path / "muon"))
    with pytest.raises(Stop):
        _run(tmp_path / "cut", stop_at=5, train=ADAMW)
    assert _equal(whole, _run(tmp_path / "cut", resume=True, train=ADAMW))


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    whole = _run(tmp_path / "whole")
    with pytest.raises(Stop):
        _run(tmp_path / "cut", stop_at=7)  # checkpoints at 2, 4, 6
    newest = checkpoints(tmp_path / "cut")[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # as if the machine died mid-write
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        assert load_latest(tmp_path / "cut")["step"] == 4
    with pytest.warns(UserWarning):
        resumed = _run(tmp_path / "cut", resume=True)
    assert _equal(whole, resumed)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    _run(tmp_path / "run")  # checkpoints at 2, 4, 6, 8; keep 3
    assert [p.name for p in checkpoints(tmp_path / "run")] == [
        "step_00000004.pt",
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    with pytest.raises(ValueError, match="every and keep must be >= 1"):
        CheckpointConfig(every=0)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="has no readable checkpoint"):
        _run(tmp_path / "empty", resume=True)


def test_cli_resume_continues_a_run_exactly(tmp_path, capsys):
    """`dalle train --resume` from the step-3 checkpoint of a 6-step run ends where it ended."""
    from dalle.config import VAEConfig
    from dalle.models.saving import WEIGHTS_FILE
    from dalle.models.vae import DiscreteVAE

    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(tmp_path / "vae")
    tokens = tmp_path / "tokens.safetensors"
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", "shapes", "--num", "16"]
    assert main([*argv, "--out", str(tokens)]) == 0
    run = tmp_path / "run"

    def train(out: Path, steps: int = 6, *extra: str) -> int:
        argv = ["train", "--vae", str(tmp_path / "vae"), "--tokens", str(tokens), "--out", str(out)]
        argv += ["--steps", str(steps), "--batch-size", "4", "--checkpoint-every", "3"]
        return main([*argv, "--save-every", "6", *extra])

    assert train(run) == 0
    final = (run / "model" / "transformer" / WEIGHTS_FILE).read_bytes()
    checkpoints(run)[-1].unlink()  # lose the step-6 checkpoint: resume from step 3
    (run / "model" / "transformer" / WEIGHTS_FILE).unlink()
    assert train(run, 6, "--resume") == 0
    assert (run / "model" / "transformer" / WEIGHTS_FILE).read_bytes() == final
    capsys.readouterr()
    assert train(run, 7, "--resume") == 2  # other settings than the run's
    assert "--resume needs the settings" in capsys.readouterr().err
    assert train(tmp_path / "none", 6, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_checkpoints_are_due_by_steps_or_by_minutes():
    by_steps = CheckpointConfig(every=10)
    assert by_steps.due(20, 10, 1e9) and not by_steps.due(21, 20, 1e9)
    timed = CheckpointConfig(every=1000, minutes=0.5)
    assert not timed.due(5, 0, 29.0) and timed.due(5, 0, 30.0)
    assert not timed.due(5, 5, 60.0)  # nothing new since the last save
    with pytest.raises(ValueError, match="minutes must be > 0"):
        CheckpointConfig(every=1, minutes=0)


@pytest.mark.parametrize("warm_start", ["1", "0"])
def test_train_vae_resumes_exactly(tmp_path, warm_start):
    """Both one-phase dVAE recipes: the k-means warm start and the relaxed ELBO."""
    from dalle.models.saving import WEIGHTS_FILE

    run = tmp_path / "run"
    argv = ["train-vae", "--data", "shapes", "--out", str(run), "--steps", "6"]
    argv += ["--batch-size", "4", "--warm-start", warm_start, "--checkpoint-every", "3"]
    assert main([*argv, "--save-every", "6"]) == 0
    weights = run / "model" / WEIGHTS_FILE
    final = weights.read_bytes()
    checkpoints(run)[-1].unlink()  # back to step 3
    weights.unlink()
    assert main([*argv, "--save-every", "6", "--resume"]) == 0
    assert weights.read_bytes() == final


def test_train_vae_resume_needs_a_one_phase_recipe(tmp_path, capsys):
    argv = ["train-vae", "--data", "shapes", "--out", str(tmp_path), "--steps", "6"]
    assert main([*argv, "--warm-start", "0.5", "--resume"]) == 2
    assert "one-phase recipe" in capsys.readouterr().err


def test_resume_accepts_a_run_started_by_older_code_as_it_was(tmp_path):
    """Recorded settings that lack a field added since resume when it is at its default (at
    its old value, for a field whose default changed since: ``CHANGED_DEFAULTS``); ones
    that hold an option removed since (a config's ``REMOVED_FIELDS``) resume when it was off,
    and are a clear error when it was on."""
    from dalle.train.run import record_settings

    configs = {"model": TransformerConfig, "train": TransformerTrainConfig}
    model, train = to_dict(TransformerConfig(dim=64)), to_dict(TransformerTrainConfig(lr=0.1))
    new = {"model": model, "train": train, "rows": 4}
    old = copy.deepcopy(new)
    del old["model"]["conv_kernel"]  # written before the field was added (at its default)
    del old["train"]["optimizer"]
    old["model"] |= {"text_alibi": False, "text_depth": 0}  # and with options since removed
    old["train"] |= {"word_dropout": 0.0, "code_dropout": 0.0}
    record_settings(tmp_path, old, resume=False)
    changed = copy.deepcopy(new)
    changed["model"]["conv_kernel"] = 3
    with pytest.raises(ValueError, match="--resume needs the settings"):
        record_settings(tmp_path, changed, resume=True, configs=configs)
    with pytest.raises(ValueError, match="--resume needs the settings"):  # no configs known
        record_settings(tmp_path, new, resume=True)
    # A field whose default changed: a run recorded without it resumes at the old value only.
    assert new["train"]["optimizer"] == "muon"
    with pytest.raises(ValueError, match="--resume needs the settings"):
        record_settings(tmp_path, new, resume=True, configs=configs)
    new["train"]["optimizer"] = "adamw"
    record_settings(tmp_path, new, resume=True, configs=configs)  # unchanged: accepted
    record_settings(tmp_path, old, resume=False)
    with pytest.raises(ValueError, match="--resume needs the settings"):  # a field dropped
        record_settings(tmp_path, {**new, "model": {}}, resume=True, configs=configs)
    with pytest.raises(ValueError, match="--resume needs the settings"):  # a value changed
        record_settings(tmp_path, {**new, "rows": 5}, resume=True, configs=configs)
    old["train"]["word_dropout"] = 0.15  # a run trained with the option on
    record_settings(tmp_path, old, resume=False)
    message = "train_config.json: word_dropout=0.15 was an experimental option of TransformerTrainConfig, since removed (see docs/experiments.md)"
    with pytest.raises(ValueError, match=re.escape(message)):
        record_settings(tmp_path, new, resume=True, configs=configs)


def test_cli_train_for_minutes_re_plans_its_steps_to_end_on_time(tmp_path, capsys):
    """`dalle train --minutes`: a plan of 100 000 steps ends after about its 3 seconds on the
    schedule of the re-planned count; with --resume it is a clear error before any work."""
    import json
    import time

    from dalle.config import VAEConfig
    from dalle.models.vae import DiscreteVAE
    from dalle.train.schedules import lr_factor

    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(tmp_path / "vae")
    tokens = tmp_path / "tokens.safetensors"
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", "shapes", "--num", "16"]
    assert main([*argv, "--out", str(tokens)]) == 0
    argv = ["train", "--vae", str(tmp_path / "vae"), "--tokens", str(tokens), "--out"]
    argv += [str(tmp_path / "run"), "--steps", "100000", "--batch-size", "4", "--minutes", "0.05"]
    t0 = time.perf_counter()
    assert main(argv) == 0
    took = time.perf_counter() - t0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(rows[-1])
    assert took < 15 and 35 < last["step"] < 100_000  # re-planned at least once, then ended
    n = last["step"]  # the last step's lr is the schedule's at the re-planned end
    assert last["lr"] == pytest.approx(3e-3 * lr_factor(n - 1, n, 100, 0.05))
    capsys.readouterr()
    assert main([*argv[:6], str(tmp_path / "again"), "--minutes", "1", "--resume"]) == 2
    assert "cannot --resume" in capsys.readouterr().err
