"""The HTTP API and the web page over one loaded :class:`~dalle.pipeline.DallePipeline`.

Routes (the request and response bodies are in ``dalle.serve.schemas`` and ``/openapi.json``):

- ``GET /``: the page (``page.html``, self-contained: no CDN, no external fonts);
- ``POST /v1/generate``: JSON in, ``{prompt, images: [{png_base64, seed, index, score?}],
  keep_rows?, elapsed_s}`` out;
- ``POST /v1/generate/stream``: the same body, answered with server-sent events: ``queued``
  (``{ahead, total}``), ``progress`` (``{done, total}`` image tokens, at most one per percent),
  then ``result`` (the JSON above) or ``error`` (``{status, detail}``);
- ``GET /v1/health``, ``GET /v1/model`` (configs, limits and the model's sampling defaults),
  ``GET /v1/examples`` (captions from the model's own training data, saved in its folder; none
  for a folder without them).

A request's sampling fields override the model's defaults (``pipeline.sampling``, from its
``generation.json``) one by one; the fields it leaves out keep them. A request with ``image``
(base64) completes that picture, keeping its top ``keep_rows`` code rows: the picture is
decoded and checked (``dalle.serve.uploads``) off the event loop before the job is queued, so
a bad one is a 422 naming ``image`` on both routes.

Generation runs on the worker of ``dalle.serve.worker``. Every error answer is
``{detail, field?}``: 413 for a body over ``MAX_BODY_BYTES``, 422 for a bad request (naming the
field), 429 with ``Retry-After`` when the queue is full, 504 past the time limit, 500 when the
model fails (the server stays up).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import fields
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from dalle import __version__
from dalle.config import to_dict
from dalle.images import png_bytes
from dalle.pipeline import DallePipeline
from dalle.sampling import SamplingConfig
from dalle.serve.schemas import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_RERANK,
    Error,
    Examples,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelInfo,
    QueueState,
)
from dalle.serve.uploads import MAX_IMAGE_BYTES, MAX_IMAGE_CHARS, MAX_IMAGE_PIXELS, decode_image
from dalle.serve.worker import GenerationQueue, Job, JobCancelled, JobTimeout, Progress, QueueFull

log = logging.getLogger("dalle.serve")
GRACE_S = 5.0  # past a job's deadline, the request stops waiting for a worker that is stuck
SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingConfig))
KEEPALIVE_S = 15.0  # an SSE comment this often while a streamed job waits in the queue
# A request body is a prompt of at most MAX_PROMPT_CHARS (12 bytes each, JSON-escaped at worst),
# a few numbers and perhaps a base64 picture; a larger one is refused before it is read whole.
MAX_BODY_BYTES = 64 * 1024 + MAX_IMAGE_CHARS


class ApiError(Exception):
    """An error answer: HTTP ``status``, one-line ``detail``, optional field and headers."""

    def __init__(
        self, status: int, detail: str, field: str | None = None, headers: dict | None = None
    ):
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers

    def response(self) -> JSONResponse:
        body = Error(detail=self.detail, field=self.field).model_dump(exclude_none=True)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class BodyLimit:
    """ASGI middleware: answers 413 to a request whose body is over ``limit`` bytes, by its
    ``Content-Length`` or, for a chunked body, as soon as the bytes received pass the limit;
    the app then sees the whole (small) body at once."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self.refuse(scope, receive, send)
        body, message = bytearray(), {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                return await self.app(scope, _replay(message, receive), send)
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self.refuse(scope, receive, send)
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay(whole, receive), send)

    async def refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        detail = f"the request body is over the {self.limit}-byte limit"
        await ApiError(413, detail).response()(scope, receive, send)


def _replay(first: dict, receive: Callable) -> Callable:
    """``receive`` that returns ``first`` once, then the real messages (a disconnect)."""
    pending = [first]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Error, "description": f"the request body is over {MAX_BODY_BYTES} bytes"},
    422: {"model": Error, "description": "a bad request; `field` names the request field"},
    429: {"model": Error, "description": "the queue is full; retry after `Retry-After` seconds"},
    500: {"model": Error, "description": "the model failed on this request"},
    504: {"model": Error, "description": "generation ran past the server's time limit"},
}


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return ApiError(422, f"the request body is not valid JSON ({reason})").response()
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    msg = first.get("msg", "invalid request")
    return ApiError(422, f"{field or 'request body'}: {msg}", field).response()


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


def _job_error(exc: BaseException) -> ApiError:
    """A failed job as the answer to its request."""
    if isinstance(exc, JobTimeout):
        return ApiError(504, str(exc))
    if isinstance(exc, JobCancelled):
        return ApiError(503, str(exc))
    if isinstance(exc, ValueError):
        return ApiError(422, str(exc).splitlines()[0] if str(exc) else "invalid request")
    log.error("generation failed", exc_info=exc)
    return ApiError(500, f"generation failed: {exc.__class__.__name__}: {exc}".splitlines()[0])


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def create_app(
    pipeline: DallePipeline,
    *,
    name: str = "dalle",
    queue_size: int = 8,
    timeout_s: float = 120.0,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving ``pipeline``; its worker starts and stops with the app. Request
    bodies over ``max_body_bytes`` are answered 413 unread."""
    jobs = GenerationQueue(queue_size, timeout_s)
    page = files("dalle.serve").joinpath("page.html").read_text(encoding="utf-8")
    examples = list(pipeline.examples)
    vae_cfg = pipeline.vae.cfg

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        try:
            yield
        finally:
            await asyncio.to_thread(jobs.stop)

    app = FastAPI(
        title="dalle",
        version=__version__,
        description="Text-to-image generation with a DALL-E model (Ramesh et al. 2021).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the schema is enough
        redoc_url=None,
    )
    app.state.jobs = jobs
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)

    def settings(req: GenerateRequest) -> SamplingConfig:
        """The model's sampling defaults with the fields the request gives (ApiError 422)."""
        given = {k: getattr(req, k) for k in SAMPLING_FIELDS if k in req.model_fields_set}
        try:
            sampling = pipeline.settings(**given)
        except ValueError as e:
            raise ApiError(422, str(e).splitlines()[0]) from None
        if sampling.rerank is not None and pipeline.clip is None:
            raise ApiError(422, "rerank: this model has no CLIP (clip/) to rerank with", "rerank")
        return sampling

    async def source(req: GenerateRequest) -> tuple[Any, int | None]:
        """The request's picture (decoded off the event loop) and the code rows it keeps, or
        ``(None, None)``; ApiError 422 for a bad picture, ``keep_rows`` or blank prompt."""
        if req.image is None:
            if not req.prompt.strip():
                detail = "prompt: the prompt is blank (only a request with an image may be)"
                raise ApiError(422, detail, "prompt")
            if req.keep_rows is not None:
                raise ApiError(422, "keep_rows: needs an image to keep the rows of", "keep_rows")
            return None, None
        grid = vae_cfg.grid_size
        if req.keep_rows is not None and req.keep_rows > grid:
            detail = f"keep_rows: expected 0..{grid} (the model's code rows), got {req.keep_rows}"
            raise ApiError(422, detail, "keep_rows")
        try:
            image = await asyncio.to_thread(decode_image, req.image)
        except ValueError as e:
            raise ApiError(422, str(e).splitlines()[0], "image") from None
        except Exception as e:  # a decoder's surprise is still the picture's fault, not a 500
            log.warning("an uploaded image failed to decode", exc_info=e)
            detail = f"image: not a readable image ({e.__class__.__name__})"
            raise ApiError(422, detail, "image") from None
        return image, pipeline.rows_kept(req.keep_rows)

    def admit(
        req: GenerateRequest,
        sampling: SamplingConfig,
        image: Any,
        keep: int | None,
        on_progress: Progress | None = None,
    ) -> Job:
        """Queue the job (ApiError 429 when the queue is full)."""
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        try:
            job = jobs.submit(_generate(pipeline, req, sampling, seed, image, keep), on_progress)
        except QueueFull as e:
            raise ApiError(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        return job

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/health", response_model=Health)
    async def health() -> Health:
        queue = QueueState(running=jobs.running, waiting=jobs.waiting, capacity=jobs.capacity)
        return Health(
            status="ok",
            model=name,
            image_size=vae_cfg.image_size,
            device=str(pipeline.device),
            queue=queue,
        )

    @app.get("/v1/model", response_model=ModelInfo)
    async def model() -> ModelInfo:
        clip = pipeline.clip
        return ModelInfo(
            name=name,
            device=str(pipeline.device),
            image_size=vae_cfg.image_size,
            has_clip=clip is not None,
            tokenizer={"vocab_size": pipeline.tokenizer.vocab_size},
            vae=to_dict(vae_cfg),
            transformer=to_dict(pipeline.transformer.cfg),
            clip=None if clip is None else to_dict(clip.cfg),
            sampling=to_dict(pipeline.sampling),
            limits={
                "max_images": MAX_IMAGES,
                "max_rerank": MAX_RERANK,
                "max_prompt_chars": MAX_PROMPT_CHARS,
                "max_body_bytes": max_body_bytes,
                "max_image_bytes": MAX_IMAGE_BYTES,
                "max_image_pixels": MAX_IMAGE_PIXELS,
                "queue_size": jobs.capacity,
                "timeout_s": jobs.timeout_s,
            },
        )

    @app.get("/v1/examples", response_model=Examples)
    async def example_list() -> Examples:
        return Examples(prompts=examples)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
    )
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """Generate ``num_images`` images for ``prompt`` (completing ``image`` if given) and
        answer when all are done."""
        sampling = settings(req)
        job = admit(req, sampling, *await source(req))
        try:
            fut = asyncio.wrap_future(job.future)
            return await asyncio.wait_for(asyncio.shield(fut), job.timeout_s + GRACE_S)
        except asyncio.TimeoutError:
            job.cancel()
            detail = f"generation took longer than the {job.timeout_s:g} s limit"
            raise ApiError(504, detail) from None
        except asyncio.CancelledError:  # the client went away
            job.cancel()
            raise
        except Exception as e:
            raise _job_error(e) from None

    @app.post(
        "/v1/generate/stream",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "server-sent events: `queued` {ahead, total}, `progress` "
                "{done, total}, then `result` (a GenerateResponse) or `error` {status, detail}",
            },
            **ERRORS,
        },
    )
    async def generate_stream(req: GenerateRequest) -> StreamingResponse:
        """The same generation, reporting progress (image tokens done / total) as it goes."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

        def send(item: tuple[int, int] | None) -> None:  # from the worker thread
            loop.call_soon_threadsafe(events.put_nowait, item)

        sampling = settings(req)
        image, keep = await source(req)
        job = admit(req, sampling, image, keep, _throttled(lambda done, total: send((done, total))))
        job.future.add_done_callback(lambda _: send(None))
        sampled = pipeline.transformer.cfg.image_len - (keep or 0) * vae_cfg.grid_size
        total = req.num_images * (sampling.rerank or 1) * sampled
        return StreamingResponse(
            _stream(job, events, total),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app


async def _stream(
    job: Job, events: asyncio.Queue[tuple[int, int] | None], total: int
) -> AsyncIterator[str]:
    """Events of one streamed job; a disconnect (or any exit) cancels the job."""
    try:
        yield _sse("queued", {"ahead": job.ahead, "total": total})
        while True:
            left = job.deadline + GRACE_S - time.monotonic()
            if left <= 0:
                yield _sse("error", {"status": 504, "detail": "generation ran past the time limit"})
                return
            try:
                item = await asyncio.wait_for(events.get(), min(left, KEEPALIVE_S))
            except asyncio.TimeoutError:
                yield ": waiting\n\n"
                continue
            if item is not None:
                yield _sse("progress", {"done": item[0], "total": item[1]})
                continue
            error = job.future.exception()
            if error is None:
                yield _sse("result", job.future.result().model_dump(exclude_none=True))
            else:
                e = _job_error(error)
                yield _sse("error", {"status": e.status, "detail": e.detail})
            return
    finally:
        job.cancel()


def _throttled(send: Callable[[int, int], Any]) -> Progress:
    """Forward progress at most once per percent (and always the last token)."""
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if percent != last[0] or done == total:
            last[0] = percent
            send(done, total)

    return progress


def _generate(
    pipeline: DallePipeline,
    req: GenerateRequest,
    sampling: SamplingConfig,
    seed: int,
    image: Any = None,
    keep: int | None = None,
) -> Callable[[Progress], GenerateResponse]:
    """The job for one request: sample (completing ``image``, keeping ``keep`` code rows, when
    given), encode PNGs (on the worker, off the event loop)."""
    admitted = time.monotonic()

    def run(progress: Progress) -> GenerateResponse:
        out = pipeline(
            req.prompt,
            num_images=req.num_images,
            seed=seed,
            sampling=sampling,
            image=image,
            keep_rows=keep,
            callback=progress,
        )
        images = [
            GeneratedImage(
                png_base64=base64.b64encode(png_bytes(image)).decode("ascii"),
                seed=seed,
                index=i,
                score=None if out.scores is None else round(out.scores[i], 4),
            )
            for i, image in enumerate(out.images)
        ]
        elapsed = round(time.monotonic() - admitted, 3)
        return GenerateResponse(
            prompt=req.prompt, images=images, elapsed_s=elapsed, keep_rows=out.keep_rows
        )

    return run
