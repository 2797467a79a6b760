"""The memory planner against real CPU measurements: parameter counts of real models, the
bytes a real training pass saves for backward, and the bytes AdamW's state really takes."""

from __future__ import annotations

import pytest
import torch

from dalle.cli import main
from dalle.config import TRANSFORMER_PRESETS, TransformerConfig
from dalle.models.dalle_transformer import DALLE
from dalle.train.memory_plan import GIB, STATE_BYTES, measure_activations, meta_model, plan
from dalle.train.transformer_trainer import loss_terms

SMALL = TransformerConfig(text_len=8, image_grid=4, dim=32, depth=2, heads=2, attention=("full",) * 2)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_meta_parameter_counts_equal_real_models(name):
    cfg = TRANSFORMER_PRESETS[name]
    real = sum(p.numel() for p in DALLE(cfg).parameters())
    assert sum(p.numel() for p in meta_model(cfg).parameters()) == real
    assert plan(cfg, 2, 16).parameters == real


@pytest.mark.parametrize("palette", [0, 8])
def test_meta_activations_equal_a_real_cpu_pass(palette):
    cfg = TransformerConfig(**{**SMALL.__dict__, "image_vocab": 64, "image_palette": palette})
    torch.manual_seed(0)
    real = measure_activations(DALLE(cfg), 3, "cpu", fused_attention=False)
    meta = measure_activations(meta_model(cfg), 3)
    assert meta == real
    assert len(meta.blocks) == cfg.depth and meta.block_input == 3 * (cfg.seq_len - 1) * cfg.dim * 4
    assert meta.checkpointed < meta.total


def test_activations_grow_with_the_batch_and_shrink_in_bf16():
    one = measure_activations(meta_model(SMALL), 1)
    four = measure_activations(meta_model(SMALL), 4)
    assert 3.5 * one.total < four.total <= 4 * one.total  # a few saved tensors are per batch
    half = measure_activations(meta_model(SMALL, torch.bfloat16), 4)
    assert 0.4 * four.total < half.total < 0.75 * four.total  # the loss's logits stay fp32


def test_state_is_sixteen_bytes_a_parameter_after_an_adamw_step():
    torch.manual_seed(0)
    model = DALLE(SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    text = torch.randint(0, SMALL.text_vocab, (2, SMALL.text_len))
    image = torch.randint(0, SMALL.image_vocab, (2, SMALL.image_len))
    loss_terms(model, text, image, 1 / 8, 7 / 8)[0].backward()
    opt.step()

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    params = list(model.parameters())
    state = sum(nbytes(p) + nbytes(p.grad) for p in params)
    state += sum(nbytes(v) for s in opt.state.values() for k, v in s.items() if k != "step")
    assert state == STATE_BYTES * sum(p.numel() for p in params)


def test_the_paper_preset_needs_sharding_on_eight_80_gb_gpus():
    p = plan(TRANSFORMER_PRESETS["paper"], 8, 80)
    assert 12.0e9 < p.parameters < 12.5e9  # the paper's "12-billion parameter" model
    fits = {f.strategy: f.fits for f in p.footprints}
    assert fits == {"ddp": False, "ddp + checkpointing": False, "fsdp": True,
                    "fsdp + checkpointing": True}  # fmt: skip
    fsdp = next(f for f in p.footprints if f.strategy == "fsdp")
    assert fsdp.state == -(-STATE_BYTES * p.parameters // 8)
    assert fsdp.total < 80 * GIB


def test_dalle_plan_prints_a_table_and_refuses_bad_input(capsys, tmp_path):
    assert main(["plan", "--preset", "small", "--gpus", "2", "--gpu-memory", "16",
                 "--json", str(tmp_path / "plan.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"{plan(TRANSFORMER_PRESETS['small'], 2, 16).parameters:,} parameters" in out
    assert "fsdp + checkpointing" in out and (tmp_path / "plan.json").is_file()
    assert main(["plan", "--preset", "huge"]) == 2
    assert "not a transformer preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--gpus", "0"])
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        plan(SMALL, 0, 80)
