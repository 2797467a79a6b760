"""Token files, the pipeline folder, and the encode / train / generate commands end to end on
tiny models: the ``generate`` output contract, seed determinism, the sampling defaults a
folder ships (``generation.json``) and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle.cli import main
from dalle.config import VAEConfig, to_dict
from dalle.data.image_folder import ImageFolderDataset
from dalle.data.shapes import make_sample
from dalle.data.tokens import TokenSet
from dalle.images import image_to_tensor, png_bytes, tensor_to_image
from dalle.models.saving import fingerprint
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.sampler import Sampler
from dalle.train.transformer_trainer import caption_dropout
from model_fixtures import sample_codes

VAE = VAEConfig(image_size=64, downsample=8, vocab_size=32, n_hid=8, n_init=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A dVAE folder, a token file of 48 shapes samples and a 3-step transformer run."""
    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    DiscreteVAE(VAE).save(root / "vae")
    tokens = root / "tokens.safetensors"
    argv = ["encode", "--vae", str(root / "vae"), "--data", "shapes", "--num", "48"]
    assert main([*argv, "--out", str(tokens)]) == 0
    run = root / "run"
    argv = ["train", "--vae", str(root / "vae"), "--tokens", str(tokens), "--out", str(run)]
    argv += ["--steps", "3", "--batch-size", "8", "--save-every", "3", "--text-len", "16"]
    assert main(argv) == 0
    return {"root": root, "vae": root / "vae", "tokens": tokens, "model": run / "model"}


def test_encode_writes_codes_and_captions(trained):
    tokens = TokenSet.load(trained["tokens"])
    vae = DiscreteVAE.load(trained["vae"])
    samples = [make_sample(0, "train", i) for i in range(48)]
    images = torch.stack([image_to_tensor(s.image) for s in samples])
    assert tokens.captions == [s.caption for s in samples]
    assert (tokens.grid, tokens.vocab_size) == (8, 32)
    assert torch.equal(tokens.codes.long(), vae.encode(images))
    assert tokens.vae_id == fingerprint(vae) and len(tokens.vae_id) == 16


def test_token_file_from_another_vae_is_refused(trained, tmp_path, capsys):
    torch.manual_seed(123)
    DiscreteVAE(VAE).save(tmp_path / "other")  # same architecture, other weights
    argv = ["train", "--vae", str(tmp_path / "other"), "--tokens", str(trained["tokens"])]
    assert main([*argv, "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    assert "encoded by another dVAE" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_token_file_round_trip_and_bad_files(tmp_path):
    codes = torch.randint(0, 40000, (5, 4))
    ts = TokenSet(codes, [f"caption {i}" for i in range(5)], 2, 40000)
    ts.save(tmp_path / "t.safetensors")
    back = TokenSet.load(tmp_path / "t.safetensors")
    assert (
        torch.equal(back.codes.long(), codes) and back.captions == ts.captions and back.vae_id == ""
    )
    assert back.codes.dtype == torch.int32  # as stored (40 000 codes need 32 bits), memory-mapped
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable token file"):
        TokenSet.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        TokenSet.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="captions"):
        TokenSet(codes, ["one"], 2, 40000)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 10\)"):
        TokenSet(codes, ts.captions, 2, 10)


def test_pipeline_round_trip_and_seeds(trained, tmp_path):
    pipe = DallePipeline.from_pretrained(trained["model"])
    assert pipe.transformer.cfg.text_len == 16  # --text-len
    a = pipe.generate_codes(["a red circle", "a blue square"], num_images=2, seed=7)
    assert a.shape == (4, 64)
    assert torch.equal(a, pipe.generate_codes(["a red circle", "a blue square"], 2, seed=7))
    assert not torch.equal(a, pipe.generate_codes(["a red circle", "a blue square"], 2, seed=8))
    pipe.save_pretrained(tmp_path / "copy")
    again = DallePipeline.from_pretrained(tmp_path / "copy")
    assert torch.equal(a, again.generate_codes(["a red circle", "a blue square"], 2, seed=7))
    out = pipe("a red circle", num_images=3, seed=1)
    assert len(out.images) == 3 and out.images[0].size == (64, 64)
    assert out.prompts == ["a red circle"] * 3 and out.scores is None


SAVED = Sampler(temperature=0.5, top_k=5, cond_scale=2.0)
SAVED_JSON = {"temperature": 0.5, "top_k": 5, "top_p": None, "cond_scale": 2.0, "rerank": None}
OLD_FIELDS = 5  # SAVED_JSON as written before min_p: such a file loads with min_p off


def test_sampling_defaults_ship_with_the_model(trained, tmp_path):
    plain = DallePipeline.from_pretrained(trained["model"])
    assert plain.sampler == Sampler()  # training saves plain sampling
    tuned = DallePipeline.from_pretrained(trained["model"])
    tuned.sampler = SAVED
    tuned.save_pretrained(tmp_path / "m")
    saved = tmp_path / "m" / "generation.json"
    assert json.loads(saved.read_text()) == to_dict(SAVED)
    assert SAVED_JSON.items() <= to_dict(SAVED).items()
    again = DallePipeline.from_pretrained(tmp_path / "m")
    assert again.sampler == SAVED
    assert len(SAVED_JSON) == OLD_FIELDS
    saved.write_text(json.dumps(SAVED_JSON))  # an older generation.json, without min_p
    assert DallePipeline.from_pretrained(tmp_path / "m").sampler == SAVED
    # The saved defaults draw exactly what the same settings given by the caller draw.
    prompts = ["a red circle", "a blue square"]
    codes = again.generate_codes(prompts, 2, seed=4)
    assert torch.equal(codes, plain.generate_codes(prompts, 2, seed=4, sampler=SAVED))
    assert not torch.equal(codes, plain.generate_codes(prompts, 2, seed=4))
    out = again(prompts, num_images=2, seed=4)
    explicit = plain(prompts, num_images=2, seed=4, temperature=0.5, top_k=5, cond_scale=2.0)
    assert [im.tobytes() for im in out.images] == [im.tobytes() for im in explicit.images]
    assert out.sampler == explicit.sampler == SAVED
    # A field given per call overrides the saved one; the others stay.
    assert again("a red circle", temperature=0.7).sampler == SAVED.override(temperature=0.7)
    assert again("a red circle", top_k=None).sampler.top_k is None
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['temprature'\]"):
        again("a red circle", temprature=0.7)
    plain.sampler = Sampler(rerank=2)  # no clip/ to rerank with
    with pytest.raises(ValueError, match="rerank needs a CLIP model"):
        plain.save_pretrained(tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_a_folder_without_generation_json_samples_plainly(trained, tmp_path):
    shutil.copytree(trained["model"], tmp_path / "old")
    (tmp_path / "old" / "generation.json").unlink()
    assert DallePipeline.from_pretrained(tmp_path / "old").sampler == Sampler()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object, got list"),
        ('{"temperature": 0.5}', "missing field(s) ['cond_scale', 'rerank', 'top_k', 'top_p']"),
        (json.dumps({**SAVED_JSON, "seed": 1}), "unknown field(s) ['seed']"),
        (json.dumps({**SAVED_JSON, "top_k": "5"}), "field 'top_k' must be int | None, got '5'"),
        (json.dumps({**SAVED_JSON, "temperature": -1}), "temperature must be a finite number > 0"),
        (json.dumps({**SAVED_JSON, "rerank": 4}), "rerank needs a CLIP model"),
    ],
)
def test_a_bad_generation_json_is_a_one_line_error_naming_it(trained, tmp_path, text, message):
    folder = tmp_path / "m"
    shutil.copytree(trained["model"], folder)
    (folder / "generation.json").write_text(text)
    with pytest.raises(ValueError) as e:
        DallePipeline.from_pretrained(folder)
    error = str(e.value)
    assert str(folder / "generation.json") in error and message in error and "\n" not in error


def test_generate_uses_the_model_defaults_unless_a_flag_overrides_one(trained, tmp_path, capsys):
    pipe = DallePipeline.from_pretrained(trained["model"])
    pipe.sampler = SAVED
    pipe.save_pretrained(tmp_path / "m")
    runs = iter(range(100))

    def drawn(*flags: str) -> list[np.ndarray]:
        out = tmp_path / f"gen{next(runs)}"
        argv = ["generate", "--model", str(tmp_path / "m"), "a red circle", "--num-images", "2"]
        assert main([*argv, "--seed", "5", "--out", str(out), *flags]) == 0
        lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
        return [np.asarray(Image.open(out / x["file"])) for x in lines]

    def expected(**fields) -> list[np.ndarray]:
        images = pipe("a red circle", 2, 5, SAVED.override(**fields)).images
        return [np.asarray(im) for im in images]

    def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(drawn(), expected())
    assert f"sampling: {SAVED.describe()}\n" in capsys.readouterr().out  # the model's settings
    assert same(drawn("--temperature", "0.9"), expected(temperature=0.9))
    assert not same(drawn("--temperature", "0.9"), expected())
    assert same(drawn("--top-k", "off", "--cond-scale", "1"), expected(top_k=None, cond_scale=1.0))
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "MODEL/generation.json" in capsys.readouterr().out
    (tmp_path / "m" / "generation.json").write_text("{broken")
    argv = ["generate", "--model", str(tmp_path / "m"), "a red circle"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "generation.json: not valid JSON" in err and len(err.splitlines()) == 1


def test_generate_contract(trained, tmp_path):
    out = tmp_path / "gen"
    argv = ["generate", "--model", str(trained["model"]), "a red circle", "a small blue square"]
    argv += ["--num-images", "2", "--seed", "3", "--top-k", "5", "--cond-scale", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(x["prompt"], x["index"], x["seed"]) for x in lines] == [
        ("a red circle", 0, 3),
        ("a red circle", 1, 3),
        ("a small blue square", 0, 3),
        ("a small blue square", 1, 3),
    ]
    for x in lines:
        assert not Path(x["file"]).is_absolute()
        with Image.open(out / x["file"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert (out / "grid.png").is_file()
    first = (out / lines[0]["file"]).read_bytes()
    assert main([*argv, "--out", str(out)]) == 2  # not empty
    assert main([*argv, "--out", str(out), "--force"]) == 0
    assert (out / lines[0]["file"]).read_bytes() == first  # same seed, same image


def test_generate_compile_without_a_compiler_warns_and_draws_the_same(
    trained, tmp_path, capsys, monkeypatch
):
    """``--compile`` reaches the sampler; with no working compiler (simulated) it is one
    warning line and the eager path, so the images are those of a run without the flag."""

    def no_compiler(fn, **options):
        raise RuntimeError("Compiler: cc not found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    argv = ["generate", "--model", str(trained["model"]), "a red circle", "--num-images", "2"]
    assert main([*argv, "--out", str(tmp_path / "eager")]) == 0
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "torch.compile failed" in warnings[0], err
    assert "compile: 0.0 s compiling the decode step" in out
    for name in ("0000_00.png", "0000_01.png"):
        assert (tmp_path / "eager" / name).read_bytes() == (tmp_path / "compiled" / name).read_bytes()
    assert DallePipeline.from_pretrained(trained["model"], compile=True).compile


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-images", "0"], "argument --num-images: expected a positive integer"),
        (["--top-k", "two"], "argument --top-k: expected an integer or off, got 'two'"),
        (["--temperature", "-1"], r"--temperature must be a finite number > 0, got -1\.0"),
        (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
        (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
        (["--min-p", "2"], r"--min-p must be in \(0, 1\]"),
        (["--top-k", "0"], "--top-k must be an integer >= 1"),
    ],
)
def test_generate_rejects_bad_options(trained, tmp_path, capsys, extra, message):
    """A value that is not a number is argparse's to refuse; its range is the Sampler's: both
    one line, exit status 2, nothing written."""
    argv = ["generate", "--model", str(trained["model"]), "a red circle", "--out", str(tmp_path / "o")]
    try:
        code = main([*argv, *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2 and not (tmp_path / "o").exists()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err


def test_generate_errors_are_one_line(trained, tmp_path, capsys):
    model = str(trained["model"])
    cases = [
        (["generate", "--model", model, "", "--out", str(tmp_path / "a")], "prompt 1 is empty"),
        (["generate", "--model", model, "--out", str(tmp_path / "b")], "no prompts"),
        (["generate", "--model", str(tmp_path), "x", "--out", str(tmp_path / "c")], "missing"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_long_prompt_is_cut_with_a_warning(trained, tmp_path):
    long = " and ".join(["a large red circle in the top left"] * 4)
    argv = ["generate", "--model", str(trained["model"]), long, "--num-images", "1"]
    with pytest.warns(UserWarning, match=r"truncated to text_len=\d+"):
        assert main([*argv, "--out", str(tmp_path / "g")]) == 0


def test_mismatched_parts_are_refused(trained, tmp_path):
    pipe = DallePipeline.from_pretrained(trained["model"])
    other = DiscreteVAE(VAEConfig(image_size=64, downsample=8, vocab_size=64, n_hid=8, n_init=16))
    with pytest.raises(ValueError, match="different runs"):
        DallePipeline(pipe.tokenizer, other, pipe.transformer)
    pipe.save_pretrained(tmp_path / "m")
    other.save(tmp_path / "m" / "vae")
    with pytest.raises(ValueError, match="different runs"):
        DallePipeline.from_pretrained(tmp_path / "m")


def test_demo_runs_end_to_end_in_a_small_budget(tmp_path, monkeypatch):
    """The README's first command, shrunk: tiny models, two prompts, a 12-second budget."""
    import dalle.demo_recipe as demo
    from dalle.config import TRANSFORMER_PRESETS, VAE_PRESETS, TransformerConfig

    monkeypatch.setitem(VAE_PRESETS, "shapes", VAE)
    small = TransformerConfig(dim=32, depth=2, heads=2, attention=("full", "full"))
    monkeypatch.setitem(TRANSFORMER_PRESETS, "tiny", small)
    monkeypatch.setattr(demo, "PROMPTS", ("a red circle", "a large green triangle"))
    monkeypatch.setattr(demo, "bf16_pays_off", lambda: False)  # as on a CPU without bf16
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["transformer"]["precision"] == "fp32" and report["transformer"]["compiled"]
    assert set(report["timings"]) >= {"vae_s", "encode_s", "transformer_s", "clip_s", "generate_s"}
    for key in ("fidelity", "fidelity_without_rerank"):
        assert report[key]["n"] == 8 and 0 <= report[key]["overall"] <= 1
    assert report["sampling"]["rerank"] == demo.RERANK
    table = report["sampling"]["choice"]["table"]  # the candidates, judged by pixels
    assert len(table) == len(demo.SAMPLING_CANDIDATES)
    assert all(row["metric"] == "judge" and 0 <= row["score"] <= 1 for row in table)
    saved = json.loads((out / "model" / "generation.json").read_text())
    assert saved == report["sampling"]["defaults"]
    assert Sampler(**saved) in demo.SAMPLING_CANDIDATES
    assert max(row["score"] for row in table) == next(
        row["score"] for row in table if saved.items() <= row.items()
    )
    assert 0 <= report["clip"]["retrieval"]["text_to_image"]["seen"] <= 1
    assert (out / "samples.png").is_file()
    pipe = DallePipeline.from_pretrained(out / "model")
    assert pipe.transformer.cfg.dim == 32 and pipe.clip is not None
    lines = [json.loads(x) for x in (out / "samples" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all("score" in x for x in lines)
    assert main(["demo", "--out", str(out), "--minutes", "0.2"]) == 0  # reruns into its folder


def test_token_file_codes_are_memory_mapped(tmp_path):
    codes = torch.arange(8).view(2, 4) % 5
    TokenSet(codes, ["a", "b"], 2, 5).save(tmp_path / "t.safetensors")
    back = TokenSet.load(tmp_path / "t.safetensors")
    assert back.codes.dtype == torch.int16 and torch.equal(back.codes.long(), codes)
    # The tensor reads the file's pages: a change written into the file shows through it.
    raw = bytearray((tmp_path / "t.safetensors").read_bytes())
    first = len(raw) - 2 * codes.numel()  # codes are the only tensor, stored last
    raw[first : first + 2] = (4).to_bytes(2, "little")
    with open(tmp_path / "t.safetensors", "r+b") as f:
        f.seek(first)
        f.write(raw[first : first + 2])
    assert int(back.codes[0, 0]) == 4


def test_example_prompts_travel_with_the_model_folder(trained, tmp_path):
    pipe = DallePipeline.from_pretrained(trained["model"])
    tokens = TokenSet.load(trained["tokens"])
    assert pipe.examples and set(pipe.examples) <= set(tokens.captions)  # its own captions
    pipe.examples = ["a red circle", "a blue square"]
    pipe.save_pretrained(tmp_path / "m")
    assert DallePipeline.from_pretrained(tmp_path / "m").examples == pipe.examples
    (tmp_path / "m" / "examples.json").unlink()  # a folder from before examples were saved
    assert DallePipeline.from_pretrained(tmp_path / "m").examples == []
    (tmp_path / "m" / "examples.json").write_text('{"prompts": ["ok", 3]}')
    with pytest.raises(ValueError, match="examples.json: expected"):
        DallePipeline.from_pretrained(tmp_path / "m")


# ----- image completion and variations (a tiny random pipeline of 8x8 codes) -----

GRID = 8
PROMPTS = ["a red circle", "a small blue square at the bottom"]


@pytest.fixture(scope="module")
def tiny() -> DallePipeline:
    from serve_fixtures import tiny_parts

    return DallePipeline(*tiny_parts(GRID))


def picture(i: int = 3) -> Image.Image:
    return make_sample(0, "holdout", i).image  # 64 px, the model's size


def pixel_bytes(images: list[Image.Image]) -> list[bytes]:
    return [im.tobytes() for im in images]


def test_completion_keeps_the_rows_bit_exact(tiny):
    codes = torch.cat([tiny.encode_image(picture(i))[1] for i in (1, 2)])  # (2, 64)
    for rows in (1, 3, 7):
        k = rows * GRID
        # One prime for both prompts, then one per prompt; chunks of 4 cut through a prompt.
        got = tiny.generate_codes(PROMPTS, 3, seed=2, batch_size=4, prime=codes[:1, :k])
        assert torch.equal(got[:, :k], codes[:1, :k].expand(6, -1))
        got = tiny.generate_codes(PROMPTS, 3, seed=2, batch_size=4, prime=codes[:, :k])
        assert torch.equal(got[:, :k], codes[:, :k].repeat_interleave(3, dim=0))
        assert len({tuple(row) for row in got[:, k:].tolist()}) > 1  # the rest is sampled
    # Against the sampler itself: one chunk draws what sample_codes draws with that prime.
    text = tiny.encode_prompts(PROMPTS).repeat_interleave(3, dim=0)
    prime = codes[:, : 3 * GRID].repeat_interleave(3, dim=0)
    want = sample_codes(tiny.transformer, text, generator=torch.Generator().manual_seed(5),
                        prime=prime)  # fmt: skip
    assert torch.equal(tiny.generate_codes(PROMPTS, 3, seed=5, prime=codes[:, : 3 * GRID]), want)
    # The call with an image returns those codes' images.
    out = tiny(PROMPTS, 2, seed=1, image=picture(1), keep_rows=3)
    codes = tiny.generate_codes(PROMPTS, 2, seed=1, prime=codes[:1, : 3 * GRID])
    assert out.keep_rows == 3 and out.prompts == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert pixel_bytes(out.images) == [tensor_to_image(x).tobytes() for x in tiny.decode(codes)]


def test_keeping_no_rows_is_plain_text_to_image(tiny):
    plain = pixel_bytes(tiny(PROMPTS, 2, seed=4).images)
    for zero in (0, 0.0, 0.05):  # 0.05 of 8 rows rounds to 0
        out = tiny(PROMPTS, 2, seed=4, image=picture(), keep_rows=zero)
        assert out.keep_rows == 0 and pixel_bytes(out.images) == plain


def test_keeping_every_row_returns_the_reconstruction(tiny):
    pixels = image_to_tensor(picture())[None]
    want = tensor_to_image(tiny.vae.decode(tiny.vae.encode(pixels))[0]).tobytes()
    for every in (GRID, 1.0, 0.95):
        out = tiny([PROMPTS[0], ""], 2, seed=4, image=picture(), keep_rows=every)
        assert out.keep_rows == GRID and pixel_bytes(out.images) == [want] * 4
        assert out.reconstruction.tobytes() == want and out.source.tobytes() == picture().tobytes()


def test_pictures_are_read_as_training_folders_read_them(tiny, tmp_path):
    rgba = picture(5).resize((100, 80), Image.NEAREST).convert("RGBA")  # not square, not 64 px
    rgba.putalpha(90)  # alpha is dropped, as training folders drop it
    (tmp_path / "data").mkdir()
    rgba.save(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "a.txt").write_text("a caption\n")
    want = ImageFolderDataset(tmp_path / "data", 64)[0]["image"]
    array = np.asarray(rgba)
    chw = torch.from_numpy(array.copy()).permute(2, 0, 1)
    given = [tmp_path / "data" / "a.png", str(tmp_path / "data" / "a.png"), rgba, array,
             array.astype(np.float32) / 255, chw, chw[None].double() / 255]  # fmt: skip
    for image in given:
        pixels, codes = tiny.encode_image(image)
        assert torch.equal(pixels[0], want) and codes.shape == (1, GRID * GRID)


@pytest.mark.parametrize(
    "keep, rows",
    [(None, 4), (0.5, 4), (1 / 16, 1), (3 / 16, 2), (0.3, 2), (0.99, 8), (np.int64(3), 3),
     (np.float32(0.25), 2), (8, 8)],
)  # fmt: skip
def test_keep_rows_as_rows_or_a_fraction_rounded_halves_up(tiny, keep, rows):
    assert tiny.rows_kept(keep) == rows


def test_variations_and_seeds(tiny):
    a = tiny("", 3, seed=7, image=picture())  # the empty caption, the top half kept
    assert a.prompts == [""] * 3 and a.keep_rows == GRID // 2 and len(a.images) == 3
    assert pixel_bytes(tiny("", 3, seed=7, image=picture()).images) == pixel_bytes(a.images)
    assert pixel_bytes(tiny("", 3, seed=8, image=picture()).images) != pixel_bytes(a.images)
    own = tiny(make_sample(0, "holdout", 3).caption, 3, seed=7, image=picture())  # or its own
    assert own.keep_rows == GRID // 2 and len(own.images) == 3
    # The empty caption is the all-pad one that caption dropout trains for guidance.
    empty = tiny.encode_prompts(["", " ", "a red circle"], allow_empty=True)
    assert torch.equal(empty[:2], caption_dropout(empty[:2], 1.0)) and empty[2].any()
    assert torch.equal(empty[2], tiny.encode_prompts(["a red circle"])[0])


def test_generate_completes_a_picture(tiny, tmp_path, capsys):
    tiny.save_pretrained(tmp_path / "m")
    picture(2).resize((100, 80)).save(tmp_path / "src.png")
    out = tmp_path / "gen"
    argv = ["generate", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "src.png")]
    argv += ["--keep-rows", "0.5", PROMPTS[0], "", "--num-images", "2", "--seed", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "kept the top 4 of 8 code rows" in capsys.readouterr().out
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(x["prompt"], x["index"], x["keep_rows"]) for x in lines] == [
        (PROMPTS[0], 0, 4), (PROMPTS[0], 1, 4), ("", 0, 4), ("", 1, 4),
    ]  # fmt: skip
    assert {x["image"] for x in lines} == {str(tmp_path / "src.png")}
    want = tiny([PROMPTS[0], ""], 2, seed=3, image=tmp_path / "src.png", keep_rows=4).images
    assert [(out / x["file"]).read_bytes() for x in lines] == [png_bytes(im) for im in want]
    with Image.open(out / "grid.png") as grid:  # source, reconstruction, 2 images per row
        assert grid.size == (240 + 4 * 66 + 2, 2 * 66 + 2)
    # No prompt: one row of variations.
    argv = ["generate", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "src.png")]
    assert main([*argv, "--num-images", "2", "--out", str(tmp_path / "var")]) == 0
    lines = (tmp_path / "var" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["prompt"] for x in lines] == ["", ""]
