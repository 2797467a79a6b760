"""Nothing the project loads by default runs code from a file: weights go through safetensors,
training state through ``torch.load(weights_only=True)``, OpenAI's pickles through a restricted
unpickler (``tests/test_openai_dvae.py`` has the ``os.system`` case; here every other way in).
Output file names never come from prompts, and the server listens on loopback by default and
refuses oversized request bodies."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from dalle.cli import build_parser, main
from dalle.cli.serve import is_loopback
from dalle.data.tokens import TokenSet
from dalle.models.openai_dvae import load_openai_dvae
from dalle.models.vae import DiscreteVAE
from dalle.tokenizer import Tokenizer
from dalle.train.checkpoint import CHECKPOINT_DIR, load_latest, save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "dalle"
UNSAFE_CALLS = {  # (module, function) -> why it may not appear in src/
    ("pickle", "load"): "unpickles arbitrary code",
    ("pickle", "loads"): "unpickles arbitrary code",
    ("marshal", "loads"): "loads code objects",
    ("yaml", "load"): "constructs arbitrary objects",
    ("numpy", "load"): "unpickles with allow_pickle",
    ("np", "load"): "unpickles with allow_pickle",
    ("dill", "load"): "unpickles arbitrary code",
    ("shelve", "open"): "unpickles arbitrary code",
}


class Payload:
    """Pickles as a call of ``func(*args)``: what a malicious file would run on load."""

    def __init__(self, func: object, *args: object):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _calls(tree: ast.AST) -> list[tuple[str, str, ast.Call]]:
    """``(object name, attribute, node)`` of every ``name.attr(...)`` call."""
    out = []
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            out.append((func.value.id, func.attr, node))
    return out


def test_the_source_has_no_loader_that_can_run_code():
    """Every ``torch.load`` passes ``weights_only=True``; no pickle, marshal, yaml or numpy
    loader, ``eval`` or ``exec`` anywhere; the one Unpickler subclass restricts find_class."""
    problems, unpicklers = [], []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(SRC.parent)
        for name, attr, node in _calls(tree):
            if (name, attr) == ("torch", "load"):
                safe = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            elif (name, attr) in UNSAFE_CALLS:
                problems.append(f"{where}:{node.lineno}: {name}.{attr} {UNSAFE_CALLS[name, attr]}")
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Name) and func.id in ("eval", "exec", "__import__"):
                problems.append(f"{where}:{node.lineno}: {func.id}()")
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Attribute) and b.attr == "Unpickler" for b in node.bases
            ):
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                unpicklers.append((str(where), node.name, "find_class" in methods))
    assert not problems, "\n".join(problems)
    assert unpicklers == [("dalle/models/openai_dvae.py", "_DVAEUnpickler", True)]


def _touch(target: Path) -> Payload:
    return Payload(os.system, f"touch {target}")


def test_a_malicious_checkpoint_is_skipped_without_running(tmp_path):
    marker = tmp_path / "pwned"
    good = {"model": {"w": torch.ones(2)}, "optimizer": {}, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, 2, good, keep=3)
    torch.save({"model": _touch(marker), "step": 4}, tmp_path / CHECKPOINT_DIR / "step_00000004.pt")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint .*step_00000004.pt"):
        state = load_latest(tmp_path)
    assert (
        state is not None
        and state["step"] == 2
        and torch.equal(state["model"]["w"], good["model"]["w"])
    )
    assert not marker.exists()


def test_a_pickle_in_place_of_weights_tokens_or_tokenizer_is_refused(tmp_path):
    from dalle.config import VAEConfig

    marker = tmp_path / "pwned"
    vae_dir = tmp_path / "vae"
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(vae_dir)
    torch.save({"w": _touch(marker)}, vae_dir / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        DiscreteVAE.load(vae_dir)
    evil = tmp_path / "evil.bin"
    torch.save(_touch(marker), evil)
    with pytest.raises(ValueError, match="evil.bin: unreadable token file"):
        TokenSet.load(evil)
    with pytest.raises(ValueError, match="evil.bin is not a tokenizer JSON file"):
        Tokenizer.load(evil)
    assert not marker.exists()


ATTACKS = {  # a global the unpickler would have to resolve -> its arguments, given the marker
    "eval": (eval, lambda m: (f"open({str(m)!r}, 'w')",)),
    "exec": (exec, lambda m: (f"open({str(m)!r}, 'w')",)),
    "subprocess.Popen": (subprocess.Popen, lambda m: (["touch", str(m)],)),
    "subprocess.call": (subprocess.call, lambda m: (["touch", str(m)],)),
    "getattr": (getattr, lambda m: ("os", "system")),
    "__import__": (__import__, lambda m: ("os",)),
    "torch.load": (torch.load, lambda m: (str(m),)),
    "torch.storage._load_from_bytes": (torch.storage._load_from_bytes, lambda m: (b"",)),
    "Path.touch": (Path.touch, lambda m: (m,)),
    "zipfile.ZipFile": (zipfile.ZipFile, lambda m: (str(m), "w")),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_openai_unpickler_refuses_every_global_outside_its_allow_list(tmp_path, attack):
    marker = tmp_path / "pwned"
    func, make_args = ATTACKS[attack]
    evil = tmp_path / "encoder.pkl"
    torch.save({"model": Payload(func, *make_args(marker))}, evil)
    with pytest.raises(ValueError, match=r"refusing to unpickle \S+ from encoder\.pkl"):
        load_openai_dvae(evil, evil)
    assert not marker.exists()


def test_the_openai_importer_refuses_a_zip_bomb_before_inflating_it(tmp_path):
    """A storage entry that deflates to 64 MB: refused for being compressed, unread."""
    plain = tmp_path / "plain.pkl"
    torch.save({"w": torch.zeros(4)}, plain)
    bomb = tmp_path / "encoder.pkl"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                deflated = zipfile.ZipInfo(info.filename)
                deflated.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(deflated, "w", force_zip64=True) as f:
                    for _ in range(64):
                        f.write(bytes(2**20))
            else:
                dst.writestr(info, data)
    with zipfile.ZipFile(bomb) as z:  # the writer above deflates only the big entry
        big = [i for i in z.infolist() if i.filename.endswith("/data/0")]
    assert big and big[0].file_size == 2**26 and bomb.stat().st_size < 2**20
    with pytest.raises(ValueError, match="compressed entries"):
        load_openai_dvae(bomb, bomb)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from dalle.pipeline import DallePipeline
    from serve_fixtures import tiny_parts

    root = tmp_path_factory.mktemp("security")
    DallePipeline(*tiny_parts()).save_pretrained(root / "model")
    return root / "model"


def test_output_names_never_come_from_prompts(model_dir, tmp_path):
    prompts = ["../../escaped", "/etc/passwd", "a/b\\c", "..", ".hidden", "~root", "nul:*?<>|"]
    out = tmp_path / "work" / "out"
    argv = ["generate", "--model", str(model_dir), *prompts, "--num-images", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--out", str(out)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    expected = [f"work/out/{i:04d}_00.png" for i in range(len(prompts))]
    assert written == sorted([*expected, "work/out/grid.png", "work/out/manifest.jsonl"])
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts  # the text is kept, only as data
    assert all("/" not in r["file"] and "\\" not in r["file"] for r in rows)


def test_the_server_listens_on_loopback_unless_told_otherwise():
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1" and is_loopback(args.host)


@pytest.fixture(scope="module")
def client(model_dir):
    pytest.importorskip("fastapi", reason="dalle serve needs the [serve] extra")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the [dev] extra)")
    from fastapi.testclient import TestClient

    from dalle.pipeline import DallePipeline
    from dalle.serve.app import create_app

    with TestClient(create_app(DallePipeline.from_pretrained(model_dir))) as c:
        yield c


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream"])
def test_oversized_request_bodies_are_refused_unread(client, route):
    from dalle.serve.app import MAX_BODY_BYTES

    big = json.dumps({"prompt": "a red circle", "pad": "x" * MAX_BODY_BYTES}).encode()
    headers = {"content-type": "application/json"}
    r = client.post(route, content=big, headers=headers)  # by its Content-Length
    assert r.status_code == 413
    assert r.json() == {"detail": f"the request body is over the {MAX_BODY_BYTES}-byte limit"}

    def chunks():  # no Content-Length: counted as it arrives
        stream = io.BytesIO(big)
        while chunk := stream.read(4096):
            yield chunk

    r = client.post(route, content=chunks(), headers=headers)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    r = client.post(route, content=b"{}", headers={**headers, "content-length": "-1"})
    assert r.status_code == 413


def test_a_request_under_the_body_limit_is_served(client):
    from dalle.serve.app import MAX_BODY_BYTES

    body = {"prompt": "a red circle " + " " * 900, "num_images": 1, "seed": 3}

    def chunks():
        text = json.dumps(body).encode()
        yield text[:10]
        yield text[10:]

    r = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert client.get("/v1/model").json()["limits"]["max_body_bytes"] == MAX_BODY_BYTES
