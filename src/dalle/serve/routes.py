"""The HTTP API's routes over one :class:`~dalle.pipeline.DallePipeline`: a :class:`Service`
turns a request into a queued job (its sampler, its picture and the rows it keeps, all checked
before the job is queued), and :func:`router` publishes it:

- ``GET /``: the page (``page.html``, self-contained: no CDN, no external fonts);
- ``POST /v1/generate``: JSON in, ``{prompt, images: [{png_base64, seed, index, score?}],
  keep_rows?, elapsed_s}`` out;
- ``POST /v1/generate/stream``: the same body, answered with server-sent events: ``queued``
  (``{ahead, total}``), ``progress`` (``{done, total}`` image tokens, at most one per percent),
  then ``result`` (the JSON above) or ``error`` (``{status, detail}``);
- ``GET /v1/health``, ``GET /v1/model`` (configs, limits and the model's sampling defaults),
  ``GET /v1/examples`` (captions from the model's own training data, saved in its folder).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from importlib.resources import files
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, StreamingResponse

from dalle.config import to_dict
from dalle.images import png_bytes
from dalle.pipeline import DallePipeline
from dalle.sampler import Sampler
from dalle.sampler_settings import SamplerSettings, SettingError
from dalle.serve.errors import ERRORS, ApiError, job_error, setting_error
from dalle.serve.schemas import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_RERANK,
    Examples,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelInfo,
    QueueState,
)
from dalle.serve.uploads import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, decode_image
from dalle.serve.worker import GenerationQueue, Job, Progress, QueueFull

log = logging.getLogger("dalle.serve")
GRACE_S = 5.0  # past a job's deadline, the request stops waiting for a worker that is stuck
KEEPALIVE_S = 15.0  # an SSE comment this often while a streamed job waits in the queue
SAMPLER_FIELDS = tuple(f.name for f in fields(SamplerSettings))


class Service:
    """What the routes do with ``pipeline``: check a request, queue its job on ``jobs``, and
    describe the model (``name``, the body limit it is served with)."""

    def __init__(
        self, pipeline: DallePipeline, jobs: GenerationQueue, name: str, max_body_bytes: int
    ):
        self.pipeline, self.jobs, self.name = pipeline, jobs, name
        self.max_body_bytes = max_body_bytes

    def sampler(self, req: GenerateRequest) -> Sampler:
        """The model's sampler with the settings the request gives (ApiError 422 naming one
        the Sampler or the pipeline refuses)."""
        given = {k: getattr(req, k) for k in SAMPLER_FIELDS if k in req.model_fields_set}
        try:
            return self.pipeline.sampler_for(**given)
        except SettingError as e:
            raise setting_error(e) from None

    async def source(self, req: GenerateRequest) -> tuple[Any, int | None]:
        """The request's picture (decoded off the event loop) and the code rows it keeps, or
        ``(None, None)``; ApiError 422 for a bad picture, ``keep_rows`` or blank prompt."""
        if req.image is None and not req.prompt.strip():
            detail = "prompt: the prompt is blank (only a request with an image may be)"
            raise ApiError(422, detail, "prompt")
        try:
            keep = self.pipeline.rows_kept(req.keep_rows, req.image is not None)
        except SettingError as e:
            raise setting_error(e) from None
        if req.image is None:
            return None, None
        try:
            image = await asyncio.to_thread(decode_image, req.image)
        except ValueError as e:
            raise ApiError(422, str(e).splitlines()[0], "image") from None
        except Exception as e:  # a decoder's surprise is still the picture's fault, not a 500
            log.warning("an uploaded image failed to decode", exc_info=e)
            detail = f"image: not a readable image ({e.__class__.__name__})"
            raise ApiError(422, detail, "image") from None
        return image, keep

    async def admit(
        self, req: GenerateRequest, on_progress: Progress | None = None
    ) -> tuple[Job, Sampler, int | None]:
        """Check the request and queue its job (ApiError 422, or 429 when the queue is full);
        returns it with its sampler and the code rows it keeps."""
        sampler = self.sampler(req)
        image, keep = await self.source(req)
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        run = _generate(self.pipeline, req, sampler, seed, image, keep)
        try:
            return self.jobs.submit(run, on_progress), sampler, keep
        except QueueFull as e:
            raise ApiError(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None

    def health(self) -> Health:
        jobs, pipe = self.jobs, self.pipeline
        queue = QueueState(running=jobs.running, waiting=jobs.waiting, capacity=jobs.capacity)
        size = pipe.vae.cfg.image_size
        return Health(status="ok", model=self.name, image_size=size, device=str(pipe.device),
                      queue=queue)  # fmt: skip

    def model_info(self) -> ModelInfo:
        pipe, clip = self.pipeline, self.pipeline.clip
        return ModelInfo(
            name=self.name,
            device=str(pipe.device),
            image_size=pipe.vae.cfg.image_size,
            has_clip=clip is not None,
            tokenizer={"vocab_size": pipe.tokenizer.vocab_size},
            vae=to_dict(pipe.vae.cfg),
            transformer=to_dict(pipe.transformer.cfg),
            clip=None if clip is None else to_dict(clip.cfg),
            sampling=to_dict(pipe.sampler),
            limits={
                "max_images": MAX_IMAGES,
                "max_rerank": MAX_RERANK,
                "max_prompt_chars": MAX_PROMPT_CHARS,
                "max_body_bytes": self.max_body_bytes,
                "max_image_bytes": MAX_IMAGE_BYTES,
                "max_image_pixels": MAX_IMAGE_PIXELS,
                "queue_size": self.jobs.capacity,
                "timeout_s": self.jobs.timeout_s,
            },
        )

    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        """The job's answer once all its images are done."""
        job, _, _ = await self.admit(req)
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
            raise job_error(e) from None

    async def generate_stream(self, req: GenerateRequest) -> StreamingResponse:
        """The job's events as it goes (:func:`_stream`)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

        def send(item: tuple[int, int] | None) -> None:  # from the worker thread
            loop.call_soon_threadsafe(events.put_nowait, item)

        progress = _throttled(lambda done, total: send((done, total)))
        job, sampler, keep = await self.admit(req, progress)
        job.future.add_done_callback(lambda _: send(None))
        total = req.num_images * (sampler.rerank or 1) * self.pipeline.tokens_to_sample(keep)
        return StreamingResponse(
            _stream(job, events, total),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


STREAM = {
    "content": {"text/event-stream": {}},
    "description": "server-sent events: `queued` {ahead, total}, `progress` {done, total}, then "
    "`result` (a GenerateResponse) or `error` {status, detail}",
}


def router(service: Service) -> APIRouter:
    """The routes of the module docstring, answered by ``service``."""
    page = files("dalle.serve").joinpath("page.html").read_text(encoding="utf-8")
    api = APIRouter()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/v1/health", response_model=Health)
    async def health() -> Health:
        return service.health()

    @api.get("/v1/model", response_model=ModelInfo)
    async def model() -> ModelInfo:
        return service.model_info()

    @api.get("/v1/examples", response_model=Examples)
    async def example_list() -> Examples:
        return Examples(prompts=list(service.pipeline.examples))

    @api.post("/v1/generate", response_model=GenerateResponse, response_model_exclude_none=True,
              responses=ERRORS)  # fmt: skip
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """Generate ``num_images`` images for ``prompt`` (completing ``image`` if given) and
        answer when all are done."""
        return await service.generate(req)

    @api.post("/v1/generate/stream", response_class=StreamingResponse,
              responses={200: STREAM, **ERRORS})  # fmt: skip
    async def generate_stream(req: GenerateRequest) -> StreamingResponse:
        """The same generation, reporting progress (image tokens done / total) as it goes."""
        return await service.generate_stream(req)

    return api


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


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
                e = job_error(error)
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
    sampler: Sampler,
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
            sampler=sampler,
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
