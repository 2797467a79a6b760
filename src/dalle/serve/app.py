"""The HTTP API and the web page over one loaded :class:`~dalle.pipeline.DallePipeline`: the
FastAPI app that puts the pieces together. The routes are in ``dalle.serve.routes``, the
request and response bodies in ``dalle.serve.schemas`` (and ``/openapi.json``), the error
answers in ``dalle.serve.errors``, the single worker in ``dalle.serve.worker``.

A request's sampling fields override the model's defaults (``pipeline.sampler``, from its
``generation.json``) one by one; the fields it leaves out keep them. A request with ``image``
(base64) completes that picture, keeping its top ``keep_rows`` code rows: the picture is
decoded and checked (``dalle.serve.uploads``) off the event loop before the job is queued, so
a bad one is a 422 naming ``image`` on both routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from dalle import __version__
from dalle.pipeline import DallePipeline
from dalle.serve.errors import MAX_BODY_BYTES, ApiError, BodyLimit, api_error, validation_error
from dalle.serve.routes import Service, router
from dalle.serve.worker import GenerationQueue

__all__ = ["MAX_BODY_BYTES", "create_app"]


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
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ApiError, api_error)
    app.include_router(router(Service(pipeline, jobs, name, max_body_bytes)))
    return app
