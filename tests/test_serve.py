"""``dalle serve`` over HTTP (FastAPI's TestClient): valid requests, every validation error as a
422 naming its field, the progress stream, queue-full 429 with Retry-After, the time limit, a
failing request that leaves the server up, seed determinism, the page, the command line, and
pictures to complete: the same images as the pipeline's, bad uploads as a 422 naming them."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import threading
import time
from importlib.resources import files

import pytest

pytest.importorskip("fastapi", reason="dalle serve needs the [serve] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the [dev] extra)")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bad_images import BAD_IMAGES, RGB, image_bytes, png_header  # noqa: E402
from dalle.cli import main  # noqa: E402
from dalle.cli.serve import is_loopback  # noqa: E402
from dalle.config import to_dict
from dalle.data.shapes import make_sample  # noqa: E402
from dalle.images import png_bytes  # noqa: E402
from dalle.pipeline import DallePipeline  # noqa: E402
from dalle.sampler import Sampler  # noqa: E402
from dalle.serve.app import create_app  # noqa: E402
from dalle.serve.uploads import MAX_IMAGE_CHARS  # noqa: E402
from dalle.serve.worker import GenerationQueue, JobCancelled  # noqa: E402
from serve_fixtures import EXAMPLES, running_server, scripted, tiny_parts  # noqa: E402

GRID = 4  # 16 codes per image


@pytest.fixture(scope="module")
def pipe() -> DallePipeline:
    return DallePipeline(*tiny_parts(GRID), examples=EXAMPLES)


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe, name="tiny")) as c:
        yield c


def decode(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["png_base64"])))


def events(text: str) -> list[tuple[str, dict]]:
    """Server-sent event blocks -> [(event, data)], comments skipped."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if lines:
            fields = dict(line.split(": ", 1) for line in lines)
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_health_model_and_examples(client):
    health = client.get("/v1/health").json()
    assert health == {
        "status": "ok",
        "model": "tiny",
        "image_size": 64,
        "device": "cpu",
        "queue": {"running": 0, "waiting": 0, "capacity": 8},
    }
    model = client.get("/v1/model").json()
    assert model["transformer"]["image_grid"] == GRID and model["vae"]["image_size"] == 64
    assert model["has_clip"] is False and model["clip"] is None
    assert model["limits"]["max_images"] == 16
    plain = {"temperature": 1.0, "top_k": None, "top_p": None, "cond_scale": 1.0, "rerank": None}
    assert model["sampling"] == to_dict(Sampler())  # without generation.json: plain sampling
    assert plain.items() <= model["sampling"].items()
    assert client.get("/v1/examples").json()["prompts"] == EXAMPLES  # the model's own


def test_generate_returns_pngs(client):
    r = client.post("/v1/generate", json={"prompt": "a red circle", "num_images": 3, "seed": 11})
    assert r.status_code == 200
    body = r.json()
    assert body["prompt"] == "a red circle" and body["elapsed_s"] >= 0
    assert [(im["seed"], im["index"]) for im in body["images"]] == [(11, 0), (11, 1), (11, 2)]
    assert all("score" not in im for im in body["images"])  # no rerank, no score
    for im in body["images"]:
        png = decode(im)
        assert png.format == "PNG" and png.size == (64, 64) and png.mode == "RGB"


def test_same_seed_same_images_over_http(client):
    body = {"prompt": "a small blue square", "num_images": 2, "seed": 7, "temperature": 0.9}
    first = client.post("/v1/generate", json=body).json()["images"]
    again = client.post("/v1/generate", json=body).json()["images"]
    other = client.post("/v1/generate", json={**body, "seed": 8}).json()["images"]
    pngs = [im["png_base64"] for im in first]
    assert pngs == [im["png_base64"] for im in again]
    assert pngs != [im["png_base64"] for im in other]
    # Without a seed the server draws one and reports it; sending it back redraws the images.
    drawn = client.post("/v1/generate", json={"prompt": "a small blue square"}).json()["images"]
    seed = drawn[0]["seed"]
    redrawn = client.post("/v1/generate", json={"prompt": "a small blue square", "seed": seed})
    assert [im["png_base64"] for im in redrawn.json()["images"]] == [
        im["png_base64"] for im in drawn
    ]


def test_sampling_options_are_accepted(client):
    body = {"prompt": "a green triangle", "num_images": 1, "seed": 3, "top_k": 4, "top_p": 0.9}
    r = client.post("/v1/generate", json={**body, "cond_scale": 2.5, "temperature": 0.5})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_requests_use_the_model_defaults_unless_they_override_them():
    tuned = Sampler(temperature=0.5, top_k=4, cond_scale=2.0)
    pipe = DallePipeline(*tiny_parts(GRID), examples=EXAMPLES, sampler=tuned)
    body = {"prompt": "a red circle", "num_images": 2, "seed": 9}

    def direct(sampling: Sampler) -> list[str]:
        images = pipe("a red circle", 2, 9, sampling).images
        return [base64.b64encode(png_bytes(im)).decode("ascii") for im in images]

    with TestClient(create_app(pipe, name="tuned")) as c:

        def served(**fields) -> list[str]:
            r = c.post("/v1/generate", json={**body, **fields})
            assert r.status_code == 200, r.text
            return [im["png_base64"] for im in r.json()["images"]]

        model = c.get("/v1/model").json()
        assert model["sampling"] == to_dict(tuned)
        assert model["sampling"]["temperature"] == 0.5 and model["sampling"]["top_k"] == 4
        assert served() == served(temperature=0.5, top_k=4, cond_scale=2.0) == direct(tuned)
        assert served(temperature=0.9) == direct(tuned.override(temperature=0.9))
        assert served(temperature=0.9) != served()
        assert served(top_k=None) == direct(tuned.override(top_k=None))  # null: off
        r = c.post("/v1/generate/stream", json={**body, "rerank": None})
        assert events(r.text)[-1][0] == "result"


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "num_images": 0}, "num_images"),
        ({"prompt": "a", "num_images": 17}, "num_images"),
        ({"prompt": "a", "num_images": "2"}, "num_images"),
        ({"prompt": "a", "num_images": 2.5}, "num_images"),
        ({"prompt": "a", "num_images": True}, "num_images"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "seed": 2**32}, "seed"),
        ({"prompt": "a", "temperature": 0}, "temperature"),
        ({"prompt": "a", "temperature": -1.0}, "temperature"),
        ({"prompt": "a", "temperature": None}, "temperature"),  # only top_k, top_p, rerank
        ({"prompt": "a", "cond_scale": None}, "cond_scale"),  # turn off with null
        ({"prompt": "a", "top_k": 0}, "top_k"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "top_p": 1.5}, "top_p"),
        ({"prompt": "a", "cond_scale": -1}, "cond_scale"),
        ({"prompt": "a", "cond_scale": 21}, "cond_scale"),
        ({"prompt": "a", "rerank": 0}, "rerank"),
        ({"prompt": "a", "rerank": 2}, "rerank"),  # this model has no CLIP
        ({"prompt": "a", "num_image": 2}, "num_image"),  # a typo is not silently ignored
    ],
)
def test_each_validation_error_is_a_422_naming_the_field(client, body, field):
    for path in ("/v1/generate", "/v1/generate/stream"):
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        error = r.json()
        assert error["field"] == field and error["detail"].startswith(f"{field}: ")
        assert "\n" not in error["detail"]


@pytest.mark.parametrize(
    "content, detail",
    [
        (b'{"prompt": "a", "temperature": NaN}', "temperature: Input should be a finite number"),
        (b"not json", "the request body is not valid JSON"),
        (b'["a prompt"]', "request body: Input should be a valid dictionary"),
        (b"", "request body: Field required"),
    ],
)
def test_malformed_bodies_are_422(client, content, detail):
    r = client.post("/v1/generate", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith(detail)


def test_stream_reports_progress_then_the_same_images(client):
    body = {"prompt": "a large red circle", "num_images": 2, "seed": 5}
    with client.stream("POST", "/v1/generate/stream", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r.read().decode())
    total = 2 * GRID * GRID
    assert got[0] == ("queued", {"ahead": 0, "total": total})
    progress = [data for event, data in got if event == "progress"]
    done = [p["done"] for p in progress]
    assert done == sorted(set(done)) and done[-1] == total and len(done) > 2
    assert all(p["total"] == total for p in progress)
    event, result = got[-1]
    assert event == "result" and [event for event, _ in got[1:-1]] == ["progress"] * len(done)
    plain = client.post("/v1/generate", json=body).json()
    assert [im["png_base64"] for im in result["images"]] == [
        im["png_base64"] for im in plain["images"]
    ]


PICTURE = make_sample(0, "holdout", 3).image.resize((80, 100))  # read like training images


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_a_picture_is_completed_as_the_pipeline_completes_it(client, pipe):
    png = png_bytes(PICTURE)
    body = {"prompt": "a red circle", "num_images": 2, "seed": 9, "keep_rows": 1}
    r = client.post("/v1/generate", json={**body, "image": b64(png)})
    assert r.status_code == 200, r.text
    want = pipe("a red circle", 2, 9, image=PICTURE, keep_rows=1).images
    assert r.json()["keep_rows"] == 1
    assert [decode(im).tobytes() for im in r.json()["images"]] == [im.tobytes() for im in want]
    # A data: URL and line-wrapped base64 (what `base64 FILE` prints) are the same picture.
    wrapped = "\n".join(b64(png)[i : i + 76] for i in range(0, len(b64(png)), 76))
    for image in (f"data:image/png;base64,{b64(png)}", wrapped):
        again = client.post("/v1/generate", json={**body, "image": image}).json()
        assert again["images"] == r.json()["images"]
    # The stream counts only the tokens it samples: 3 of the 4 rows of 4 codes.
    with client.stream("POST", "/v1/generate/stream", json={**body, "image": b64(png)}) as s:
        got = events(s.read().decode())
    assert got[0] == ("queued", {"ahead": 0, "total": 2 * 3 * GRID})
    assert got[-1][0] == "result" and got[-1][1]["images"] == r.json()["images"]
    # Variations: a blank prompt with a picture, the top half kept by default.
    r = client.post("/v1/generate", json={"prompt": "", "num_images": 2, "image": b64(png)})
    assert r.status_code == 200 and r.json()["keep_rows"] == GRID // 2


GIANT = "A" * (MAX_IMAGE_CHARS + 4)  # under the body limit, over the picture's


@pytest.mark.parametrize(
    "body, field, detail",
    [
        ({"image": "%%% not base64"}, "image", "image: not valid base64"),
        ({"image": ""}, "image", "image: empty"),
        ({"image": "data:image/png,abc"}, "image", "image: a data: URL must be base64"),
        ({"image": GIANT}, "image", f"image: {len(GIANT)} characters of base64, over the limit of {MAX_IMAGE_CHARS}"),
        ({"image": b64(BAD_IMAGES["text.png"])}, "image", "image: not a readable image (expected one of PNG, JPEG"),
        ({"image": b64(BAD_IMAGES["truncated.png"])}, "image", "image: not a readable image ("),
        ({"image": b64(BAD_IMAGES["truncated.jpg"])}, "image", "image: not a readable image ("),
        ({"image": b64(BAD_IMAGES["bomb.png"])}, "image", "image: not a readable image (DecompressionBombError"),
        ({"image": b64(png_header(5000, 5000))}, "image", "image: image of 5000x5000 pixels exceeds the 16777216-pixel limit"),
        ({"image": b64(image_bytes(RGB, "BMP"))}, "image", "image: not a readable image (expected one of PNG"),
        ({"image": 5}, "image", "image: Input should be a valid string"),
        ({"image": b64(png_bytes(PICTURE)), "keep_rows": GRID + 1}, "keep_rows", "keep_rows: must be 0..4 code rows"),
        ({"image": b64(png_bytes(PICTURE)), "keep_rows": -1}, "keep_rows", "keep_rows: Input should be greater"),
        ({"image": b64(png_bytes(PICTURE)), "keep_rows": 0.5}, "keep_rows", "keep_rows: Input should be a valid integer"),
        ({"keep_rows": 1}, "keep_rows", "keep_rows: needs an image"),
    ],
)  # fmt: skip
def test_a_bad_picture_or_keep_rows_is_a_422_naming_it(client, body, field, detail):
    for path in ("/v1/generate", "/v1/generate/stream"):
        r = client.post(path, json={"prompt": "a red circle", **body})
        assert r.status_code == 422, (path, r.text)
        error = r.json()
        assert error["field"] == field and error["detail"].startswith(detail), error
        assert "\n" not in error["detail"]


def test_full_queue_answers_429_with_retry_after():
    gate = threading.Event()
    app = create_app(scripted(GRID, gate=gate), queue_size=1)
    with TestClient(app) as c:
        answers: list[int] = []

        def post() -> None:
            answers.append(
                c.post("/v1/generate", json={"prompt": "a", "num_images": 1}).status_code
            )

        def wait_for(running: int, waiting: int) -> None:
            for _ in range(200):
                q = c.get("/v1/health").json()["queue"]
                if (q["running"], q["waiting"]) == (running, waiting):
                    return
                time.sleep(0.02)
            raise AssertionError(f"the queue never reached {running} running, {waiting} waiting")

        first = threading.Thread(target=post)
        first.start()
        wait_for(1, 0)  # held at the gate
        second = threading.Thread(target=post)
        second.start()
        wait_for(1, 1)  # the one place in the queue is taken
        for path in ("/v1/generate", "/v1/generate/stream"):
            r = c.post(path, json={"prompt": "a"})
            assert r.status_code == 429
            assert int(r.headers["Retry-After"]) >= 1 and "queue is full" in r.json()["detail"]
        gate.set()
        first.join(30)
        second.join(30)
        assert answers == [200, 200]
        assert c.post("/v1/generate", json={"prompt": "a"}).status_code == 200


def test_time_limit_is_504_and_the_server_goes_on():
    app = create_app(scripted(GRID, delay=0.05), timeout_s=0.3)
    with TestClient(app) as c:
        t0 = time.monotonic()
        r = c.post("/v1/generate", json={"prompt": "a", "num_images": 1})
        assert r.status_code == 504 and "0.3 s limit" in r.json()["detail"]
        assert time.monotonic() - t0 < 2  # stopped at a token, not after all 16 x 0.05 s
        with c.stream("POST", "/v1/generate/stream", json={"prompt": "a"}) as s:
            got = events(s.read().decode())
        assert got[-1][0] == "error" and got[-1][1]["status"] == 504
        app.state.jobs.timeout_s = 30.0
        assert c.post("/v1/generate", json={"prompt": "a", "num_images": 1}).status_code == 200


def test_a_stream_whose_client_hangs_up_is_cancelled():
    import httpx

    pipe = scripted(GRID, delay=0.2)  # 16 positions: 3.2 s if it ran to the end
    with running_server(create_app(pipe)) as url, httpx.Client(base_url=url, timeout=10) as c:
        with c.stream("POST", "/v1/generate/stream", json={"prompt": "a", "num_images": 1}) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: queued"
            while not next(lines).startswith("event: progress"):
                pass  # the job is running
        t0 = time.monotonic()
        while c.get("/v1/health").json()["queue"]["running"] and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert time.monotonic() - t0 < 1.5  # stopped at its next token, not after 3 s
        pipe.delay = 0.0
        assert (
            c.post("/v1/generate/stream", json={"prompt": "b", "num_images": 1}).status_code == 200
        )


def test_a_failing_request_does_not_take_the_server_down():
    with TestClient(create_app(scripted(GRID, fail_on="boom"))) as c:
        r = c.post("/v1/generate", json={"prompt": "boom"})
        assert (
            r.status_code == 500 and r.json()["detail"] == "generation failed: RuntimeError: boom"
        )
        with c.stream("POST", "/v1/generate/stream", json={"prompt": "boom"}) as s:
            assert events(s.read().decode())[-1] == (
                "error",
                {"status": 500, "detail": "generation failed: RuntimeError: boom"},
            )
        assert c.post("/v1/generate", json={"prompt": "fine", "num_images": 2}).status_code == 200
        assert c.get("/v1/health").json()["queue"] == {"running": 0, "waiting": 0, "capacity": 8}


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/generate", "/v1/generate/stream", "/v1/health", "/v1/model"} <= set(paths)
    post = paths["/v1/generate"]["post"]
    assert {"200", "422", "429", "504"} <= set(post["responses"])
    request = schema["components"]["schemas"]["GenerateRequest"]
    sampler = [f.name for f in dataclasses.fields(Sampler)]  # one field per setting, in order
    assert list(request["properties"]) == [
        "prompt", "num_images", "seed", *sampler, "image", "keep_rows"
    ]  # fmt: skip
    assert request["properties"]["num_images"]["maximum"] == 16
    stream = paths["/v1/generate/stream"]["post"]["responses"]["200"]
    assert "text/event-stream" in stream["content"]


def test_the_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert html == files("dalle.serve").joinpath("page.html").read_text(encoding="utf-8")
    for element in ('id="prompt"', 'id="num_images"', 'id="seed"', 'id="temperature"',
                    'id="top_k"', 'id="top_p"', 'id="cond_scale"', 'id="progress"', 'id="grid"',
                    'id="examples"', "/v1/generate/stream", "download", 'id="image-file"',
                    'id="keep_rows"', 'id="drop"'):  # fmt: skip
        assert element in html
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE)
    assert not re.search(r"@import|url\(|<script[^>]+src|<link[^>]+stylesheet", html)
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html):
        assert ref.startswith("data:"), ref


def test_stopping_the_worker_cancels_running_and_waiting_jobs():
    jobs = GenerationQueue(capacity=2, timeout_s=60)
    jobs.start()

    def forever(progress) -> None:
        for i in range(10_000):
            progress(i, 10_000)
            time.sleep(0.01)

    running = jobs.submit(forever)
    waiting = jobs.submit(forever)
    while not jobs.running:
        time.sleep(0.01)
    t0 = time.monotonic()
    jobs.stop()
    assert time.monotonic() - t0 < 2
    for job in (running, waiting):
        with pytest.raises(JobCancelled):
            job.future.result(timeout=1)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        GenerationQueue(timeout_s=float("nan"))


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False), ("::", False),
     ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_command_loads_once_and_warns_off_loopback(tmp_path, monkeypatch, capsys):
    import uvicorn

    DallePipeline(*tiny_parts(GRID)).save_pretrained(tmp_path / "run" / "model")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    argv = ["serve", "--model", str(tmp_path / "run" / "model"), "--port", "8123"]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    assert calls[0][1] == {"host": "127.0.0.1", "port": 8123, "log_level": "info"}
    with TestClient(calls[0][0]) as c:
        assert c.get("/v1/health").json()["model"] == "run/model"
    assert main([*argv, "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0, not loopback" in err


def test_serve_command_compiles_before_serving(tmp_path, monkeypatch, capsys):
    import uvicorn

    from dalle.sampler import compiled_step

    DallePipeline(*tiny_parts(GRID)).save_pretrained(tmp_path / "model")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    loaded = []
    load = DallePipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        loaded.append(load(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(DallePipeline, "from_pretrained", classmethod(spy))
    assert main(["serve", "--model", str(tmp_path / "model"), "--compile"]) == 0
    assert "compiled the decode step in" in capsys.readouterr().out
    (pipe,) = loaded
    assert pipe.compile and compiled_step(pipe.transformer).compile_s > 0  # before any request


def test_serve_command_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle serve: error: ") and "does not exist" in err
    assert "\n" not in err
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tmp_path), "--port", "70000"])
    assert "expected a port in 0..65535" in capsys.readouterr().err
