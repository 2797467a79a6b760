"""The loop's optimizers: AdamW by default (unchanged), and Muon for the blocks' matrices with
AdamW for the rest, checked against each torch optimizer run alone on its own parameters."""

from __future__ import annotations

import copy

import pytest
import torch

from dalle.config import TransformerConfig
from dalle.models.dalle_transformer import DALLE
from dalle.train.optimizer import MuonAdamW, block_matrices, make_optimizer, param_groups
from dalle.train.train_config import OptimConfig, TransformerTrainConfig

CFG = TransformerConfig(text_vocab=20, text_len=4, image_vocab=8, image_grid=2, dim=16,
                        depth=2, heads=2, attention=("full", "full"))  # fmt: skip
TEXT = torch.randint(1, 20, (4, 4), generator=torch.Generator().manual_seed(1))
IMAGE = torch.randint(0, 8, (4, 4), generator=torch.Generator().manual_seed(2))


def _model() -> DALLE:
    torch.manual_seed(0)
    return DALLE(CFG)


def _loss(model: DALLE) -> torch.Tensor:
    logits = model(TEXT, IMAGE)[:, CFG.text_len - 1 : -1]
    target = IMAGE + CFG.text_vocab_total
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def _steps(model: DALLE, opt, n: int, lr: float = 1e-2) -> None:
    for _ in range(n):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        _loss(model).backward()
        opt.step()


def test_muon_owns_exactly_the_blocks_weight_matrices():
    model = _model()
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)] for p in block_matrices(model))
    per_block = ["attn.proj.weight", "attn.qkv.weight", "mlp.fc.weight", "mlp.proj.weight"]
    assert muon == [f"transformer.layers.{i}.{n}" for i in range(2) for n in per_block]
    opt = make_optimizer(model, OptimConfig(steps=1, lr=1e-2, optimizer="muon"))
    owned = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(names)  # every parameter, each exactly once


def test_muon_adamw_steps_as_each_torch_optimizer_alone():
    cfg = OptimConfig(steps=3, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), optimizer="muon")
    model = _model()
    _steps(model, make_optimizer(model, cfg), 3)

    reference = _model()
    matrices = block_matrices(reference)
    muon = torch.optim.Muon(matrices, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    rest = param_groups(reference, 0.1, frozenset(id(p) for p in matrices))
    adamw = torch.optim.AdamW(rest, lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):
        muon.zero_grad()
        adamw.zero_grad()
        _loss(reference).backward()
        muon.step()
        adamw.step()
    muon_owned = {id(p) for p in matrices}
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if id(q) in muon_owned:  # GroupedMuon's batched iteration: the same bits as Muon's
            assert torch.equal(p, q), name
        else:  # fused AdamW against the reference's loop over tensors
            torch.testing.assert_close(p, q, msg=name)
    assert not torch.equal(model.transformer.layers[0].mlp.fc.weight, _model().transformer.layers[0].mlp.fc.weight)


def test_muon_adamw_state_round_trips_exactly():
    cfg = OptimConfig(steps=4, lr=1e-2, optimizer="muon")
    whole = _model()
    _steps(whole, make_optimizer(whole, cfg), 4)

    cut = _model()
    opt = make_optimizer(cut, cfg)
    _steps(cut, opt, 2)
    saved_model, saved_opt = copy.deepcopy(cut.state_dict()), copy.deepcopy(opt.state_dict())
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt = make_optimizer(resumed, cfg)
    opt.load_state_dict(saved_opt)
    _steps(resumed, opt, 2)
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="not a Muon"):
        opt.load_state_dict(torch.optim.AdamW(resumed.parameters()).state_dict())


def test_the_transformer_trains_with_muon_by_default_and_the_loop_with_adamw():
    assert TransformerTrainConfig().optim().optimizer == "muon"
    opt = make_optimizer(_model(), OptimConfig(steps=1, lr=1e-2))  # the dVAE's and CLIP's
    assert type(opt) is torch.optim.AdamW
    assert isinstance(make_optimizer(_model(), OptimConfig(steps=1, lr=1e-2, optimizer="muon")), MuonAdamW)


def test_bad_optimizer_choices_are_clear_errors():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TransformerTrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="needs a model with hidden blocks"):
        make_optimizer(torch.nn.Linear(2, 2), OptimConfig(steps=1, lr=1e-2, optimizer="muon"))
