"""Import of OpenAI's released dVAE pickles, checked against OpenAI's own ``dall-e`` package.

The reference is a test-only dependency (``requirements-test-openai.txt``); the parity tests
skip without it. The safety tests (no code runs while reading a pickle) always run.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dalle.cli import main
from dalle.models.openai_dvae import import_openai_dvae, load_openai_dvae
from dalle.models.vae import DiscreteVAE

NO_DALL_E = (
    "OpenAI's dall-e package is not installed, so the dVAE parity tests cannot run: "
    "pip install -c constraints-cpu.txt attrs requests && "
    "pip install --no-deps -r requirements-test-openai.txt"
)
SMALL = {"n_hid": 64, "n_blk_per_group": 1, "vocab_size": 512}  # OpenAI's minimum sizes


@pytest.fixture(scope="module")
def openai() -> tuple[type, type, Callable, Callable]:
    try:
        from dall_e.decoder import Decoder
        from dall_e.encoder import Encoder
        from dall_e.utils import map_pixels, unmap_pixels
    except ImportError as e:
        pytest.skip(f"{NO_DALL_E} ({e})")
    return Encoder, Decoder, map_pixels, unmap_pixels


def _release(openai, tmp_path: Path, seed: int, **kwargs) -> tuple[Path, Path, object, object]:
    """Random-weight Encoder/Decoder of OpenAI's package, saved with torch.save as released."""
    Encoder, Decoder, _, _ = openai
    n_init = kwargs.pop("n_init", 128)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # their Conv2d draws its init from the global generator
        enc, dec = Encoder(**kwargs), Decoder(n_init=n_init, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
            if name.endswith(".b"):  # released biases are trained, not zero
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    paths = tmp_path / "encoder.pkl", tmp_path / "decoder.pkl"
    torch.save(enc, paths[0])
    torch.save(dec, paths[1])
    return paths[0], paths[1], enc.eval(), dec.eval()


def _parity(openai, tmp_path: Path, image_size: int, batch: int, seed: int, **kwargs):
    """Max abs differences (encoder logits, decoded image) between theirs and our import."""
    _, _, map_pixels, unmap_pixels = openai
    enc_pkl, dec_pkl, enc, dec = _release(openai, tmp_path, seed, **kwargs)
    vae = load_openai_dvae(enc_pkl, dec_pkl, image_size=image_size)
    g = torch.Generator().manual_seed(seed + 2)
    images = torch.rand(batch, 3, image_size, image_size, generator=g)
    with torch.no_grad():
        theirs = enc(map_pixels(images))
        ours = vae.logits(images)
    assert ours.shape == theirs.shape
    codes = theirs.argmax(dim=1)  # (B, h, w)
    assert torch.equal(ours.argmax(dim=1), codes)
    with torch.no_grad():
        one_hot = F.one_hot(codes, vae.cfg.vocab_size).permute(0, 3, 1, 2).float()
        their_img = unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3]))
    our_img = vae.decode(codes.flatten(1))
    return (ours - theirs).abs().max().item(), (our_img - their_img).abs().max().item(), vae


def test_parity_small(openai, tmp_path):
    logit_diff, image_diff, vae = _parity(openai, tmp_path, 32, 2, seed=0, n_init=32, **SMALL)
    assert logit_diff <= 1e-4, logit_diff
    assert image_diff <= 1e-4, image_diff
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(vae.encode(images), vae.logits(images).argmax(dim=1).flatten(1))


@pytest.mark.slow
def test_parity_paper_defaults(openai, tmp_path):
    """OpenAI's default architecture (the released one), on a 64 px image to stay fast on CPU."""
    logit_diff, image_diff, vae = _parity(openai, tmp_path, image_size=64, batch=1, seed=1)
    assert logit_diff <= 1e-4, logit_diff
    assert image_diff <= 1e-4, image_diff
    assert sum(p.numel() for p in vae.encoder.parameters()) == 53_786_240
    assert sum(p.numel() for p in vae.decoder.parameters()) == 43_829_766


def test_swapped_files_and_import_folder(openai, tmp_path):
    enc_pkl, dec_pkl, _, _ = _release(openai, tmp_path, 3, **SMALL)
    with pytest.raises(ValueError, match="expected a pickled dall_e Encoder, got dall_e.decoder"):
        load_openai_dvae(dec_pkl, enc_pkl)
    other = tmp_path / "other"
    other.mkdir()
    _, wide_dec, _, _ = _release(openai, other, 3, **{**SMALL, "n_hid": 128})
    with pytest.raises(ValueError, match="disagree on n_hid: 64 vs 128"):
        load_openai_dvae(enc_pkl, wide_dec)
    vae = import_openai_dvae(enc_pkl, dec_pkl, tmp_path / "vae", image_size=32)
    loaded = DiscreteVAE.load(tmp_path / "vae")
    assert loaded.cfg == vae.cfg
    for name, t in vae.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name


def test_cli_round_trip(openai, tmp_path, capsys):
    enc_pkl, dec_pkl, enc, _ = _release(openai, tmp_path, 4, **SMALL)
    out = tmp_path / "out"
    argv = ["import-openai-dvae", "--encoder", str(enc_pkl), "--decoder", str(dec_pkl)]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    vae = DiscreteVAE.load(out)
    assert vae.cfg.image_size == 256 and vae.cfg.n_hid == 64 and vae.cfg.vocab_size == 512
    assert torch.equal(vae.encoder.blocks.input.w, enc.blocks.input.w)
    assert main(argv) == 2  # out is no longer empty
    assert "not empty" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "encoder.pkl"
    torch.save({"model": _Exploit(target)}, evil)
    refused = r"refusing to unpickle (os|posix)\.system from encoder\.pkl: not a known dVAE class"
    with pytest.raises(ValueError, match=refused):
        load_openai_dvae(evil, evil)
    torch.save(_Exploit(target), evil, _use_new_zipfile_serialization=False)  # torch < 1.6 format
    with pytest.raises(ValueError, match="a bare pickle"):
        load_openai_dvae(evil, evil)
    assert not target.exists()


def test_not_a_torch_pickle(tmp_path):
    text = tmp_path / "encoder.pkl"
    text.write_text("not a pickle\n")
    with pytest.raises(ValueError, match="not a torch.save zip archive"):
        load_openai_dvae(text, text)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(ValueError, match="a bare pickle"):
        load_openai_dvae(plain, plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="expected a pickled module, got Tensor"):
        load_openai_dvae(tensor, tensor)


def test_cli_missing_file(tmp_path, capsys):
    argv = [
        "import-openai-dvae",
        "--encoder",
        str(tmp_path / "nope.pkl"),
        "--decoder",
        str(tmp_path / "nope2.pkl"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    assert "missing file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
