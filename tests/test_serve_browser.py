"""The web page in a real browser: Playwright drives Debian's Chromium (``/usr/bin/chromium``,
headless) against ``dalle serve`` on loopback. It types a prompt, presses Generate, watches the
progress bar move, waits for the images, downloads one and saves a screenshot to
``test-artifacts/serve_page.png``; a second test uploads a picture (chosen, then dropped),
moves the kept rows with the slider and a click, asks for variations and saves
``serve_completion.png`` (``DALLE_TEST_ARTIFACTS`` to change the folder; it gets a
``.gitignore`` of its own, so the output is never committed).

Without Playwright or Chromium the test is skipped with a reason in capitals, and a warning,
so a missing browser is never mistaken for a pass (``.ci/run`` installs both).
"""

from __future__ import annotations

import base64
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="dalle serve needs the [serve] extra (fastapi, uvicorn)")

from dalle.data.shapes import make_sample  # noqa: E402
from dalle.sampler import Sampler  # noqa: E402
from dalle.serve.app import create_app  # noqa: E402
from serve_fixtures import running_server, scripted  # noqa: E402

CHROMIUM = Path(os.environ.get("DALLE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(
    os.environ.get("DALLE_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
GRID = 8  # 64 codes per image
NUM_IMAGES = 4
SAMPLING = Sampler(temperature=0.8, top_k=6)  # the model's defaults, shown by the page


def skip_loudly(reason: str) -> None:
    message = f"BROWSER TEST SKIPPED: {reason}"
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The app under uvicorn on loopback; sampling is slowed to 10 ms per position so the bar
    has time to be seen moving."""
    pipe = scripted(GRID, delay=0.01, sampler=SAMPLING)
    with running_server(create_app(pipe, name="tiny-random")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as e:
        skip_loudly(f"playwright is not installed ({e}); pip install playwright")
    if not CHROMIUM.is_file():
        skip_loudly(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        except Error as e:
            skip_loudly(f"Chromium at {CHROMIUM} did not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


WATCH_PROGRESS = """() => {
  const bar = document.getElementById("progress");
  window.seen = [];
  new MutationObserver(() => window.seen.push(
      [Number(bar.getAttribute("value")), Number(bar.getAttribute("max"))]))
    .observe(bar, { attributes: true, attributeFilter: ["value", "max"] });
}"""
MID_PROGRESS = """() => {
  const bar = document.getElementById("progress");
  const value = Number(bar.getAttribute("value")), max = Number(bar.getAttribute("max"));
  return max > 1 && value > 0 && value < max;
}"""


def test_page_generates_images_with_live_progress(browser, server_url):
    page = browser.new_page(viewport={"width": 1024, "height": 860}, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "request",
        lambda r: None if r.url.startswith((server_url, "data:")) else problems.append(r.url),
    )
    page.goto(server_url)
    page.wait_for_selector("#examples button")
    assert "tiny-random · 64×64 px · cpu" in page.inner_text("#model")
    assert page.is_disabled("#rerank")  # this model has no CLIP
    controls = {name: page.input_value(f"#{name}") for name in ("temperature", "top_k", "top_p")}
    assert controls == {"temperature": "0.8", "top_k": "6", "top_p": ""}  # the model's defaults

    first_example = page.inner_text("#examples button >> nth=0")
    page.click("#examples button >> nth=0")
    assert page.input_value("#prompt") == first_example
    page.fill("#prompt", "")
    page.locator("#prompt").press_sequentially(
        "a large red circle in the top left and a small blue square"
    )
    page.fill("#num_images", str(NUM_IMAGES))
    page.fill("#seed", "42")
    page.evaluate(WATCH_PROGRESS)
    page.click("#generate")
    page.wait_for_function(MID_PROGRESS, timeout=20_000)  # the bar is seen part-way
    page.wait_for_function(
        f"document.querySelectorAll('#grid img').length === {NUM_IMAGES} && "
        "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)",
        timeout=30_000,
    )
    total = NUM_IMAGES * GRID * GRID
    seen = page.evaluate("window.seen")
    values = [v for v, m in seen if m == total]
    assert values == sorted(values) and values[-1] == total
    assert len({v for v in values if 0 < v < total}) >= 10  # it moved, in many steps
    assert re.fullmatch(
        rf"{NUM_IMAGES} images in \d+\.\d\d s · seed 42", page.inner_text("#status")
    )
    assert page.evaluate("document.querySelector('#grid img').naturalWidth") == 64
    assert page.inner_text("#grid figcaption >> nth=1") == "seed 42 · #1"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("# test output, never committed\n*\n")
    shot = ARTIFACTS / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert problems == []  # no script errors, nothing fetched from elsewhere

    with page.expect_download() as download:
        page.click("#grid figure a >> nth=2")
    saved = ARTIFACTS / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "dalle-a-large-red-circle-in-the-top-left-and-a-small-b-seed42-2.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A value the server refuses comes back as a message, and the field is marked.
    page.evaluate("document.getElementById('form').noValidate = true")
    page.fill("#temperature", "0")
    page.click("#generate")
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").startswith("Error 422: temperature: ")
    assert page.get_attribute("#temperature", "aria-invalid") == "true"
    assert [p for p in problems if "status of 422" not in p] == []
    page.close()


DROP = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
}"""


def test_page_completes_an_uploaded_picture(browser, server_url, tmp_path):
    page = browser.new_page(viewport={"width": 1024, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if "/v1/generate" in r.url else None)
    page.goto(server_url)
    page.wait_for_selector("#examples button")
    assert page.is_hidden("#frame") and page.is_hidden("#keep_rows")

    source = tmp_path / "source.png"
    make_sample(0, "holdout", 3).image.resize((100, 80)).save(source)  # cropped to its centre
    page.set_input_files("#image-file", str(source))  # "choose a file"
    page.wait_for_selector("#frame", state="visible")
    assert page.get_attribute("#keep_rows", "max") == str(GRID)
    assert page.input_value("#keep_rows") == str(GRID // 2)  # the top half by default
    cut_top = "() => document.getElementById('cut').getBoundingClientRect().top - " \
              "document.getElementById('frame').getBoundingClientRect().top"  # fmt: skip
    assert abs(page.evaluate(cut_top) - 192 / 2) <= 1.5  # the shaded part starts half-way
    box = page.locator("#frame").bounding_box()
    page.mouse.click(box["x"] + 40, box["y"] + box["height"] * 5 / 8)  # a click moves the cut
    assert page.input_value("#keep_rows") == "5"
    page.fill("#keep_rows", "3")  # the slider
    assert abs(page.evaluate(cut_top) - 192 * 3 / 8) <= 1.5
    assert "top 3 of 8 code rows (24 of 64 px)" in page.inner_text("#keep-text")

    page.fill("#prompt", "")  # a blank prompt with a picture: variations
    page.fill("#num_images", "2")
    page.fill("#seed", "7")
    page.click("#generate")
    page.wait_for_function(
        "document.querySelectorAll('#grid img').length === 2 && "
        "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)",
        timeout=30_000,
    )
    body = sent[-1]
    assert (body["prompt"], body["keep_rows"], body["seed"]) == ("", 3, 7)
    assert base64.b64decode(body["image"]) == source.read_bytes()  # the file as it is
    assert page.get_attribute("#progress", "max") == str(2 * (GRID - 3) * GRID)  # sampled only
    assert page.inner_text("#results-hint").startswith("Variations (top 3 rows kept)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("# test output, never committed\n*\n")
    page.screenshot(path=str(ARTIFACTS / "serve_completion.png"), full_page=True)

    # Dragged and dropped; then a file that is no picture comes back as a 422 on the drop zone.
    page.evaluate(DROP, base64.b64encode(source.read_bytes()).decode())
    page.wait_for_function("document.getElementById('status').textContent.includes('dropped')")
    page.evaluate(DROP, base64.b64encode(b"not an image").decode())
    page.wait_for_function("document.getElementById('status').textContent.includes('dropped')")
    page.click("#generate")
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").startswith("Error 422: image: not a readable image")
    assert page.get_attribute("#drop", "aria-invalid") == "true"
    page.click("#clear-image")  # back to text-to-image: the prompt is required again
    assert page.is_hidden("#frame") and page.evaluate("document.getElementById('prompt').required")
    assert [p for p in problems if "status of 422" not in p] == []
    page.close()
