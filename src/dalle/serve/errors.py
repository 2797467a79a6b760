"""The HTTP API's error answers: :class:`ApiError` (status, one-line detail, the request field
at fault), the handlers that turn pydantic's and the pipeline's errors into it, and the
middleware that refuses a body over the size limit (413) before reading it whole.

Every error answer is ``{detail, field?}``: 413 for a body over ``MAX_BODY_BYTES``, 422 for a
bad request (naming the field), 429 with ``Retry-After`` when the queue is full, 503 for a job
cancelled at shutdown, 504 past the time limit, 500 when the model fails (the server stays up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dalle.sampler_settings import SettingError
from dalle.serve.schemas import Error
from dalle.serve.uploads import MAX_IMAGE_CHARS
from dalle.serve.worker import JobCancelled, JobTimeout

log = logging.getLogger("dalle.serve")
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


def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return ApiError(422, f"the request body is not valid JSON ({reason})").response()
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    msg = first.get("msg", "invalid request")
    return ApiError(422, f"{field or 'request body'}: {msg}", field).response()


def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


def job_error(exc: BaseException) -> ApiError:
    """A failed job as the answer to its request."""
    if isinstance(exc, JobTimeout):
        return ApiError(504, str(exc))
    if isinstance(exc, JobCancelled):
        return ApiError(503, str(exc))
    if isinstance(exc, ValueError):
        return ApiError(422, str(exc).splitlines()[0] if str(exc) else "invalid request")
    log.error("generation failed", exc_info=exc)
    return ApiError(500, f"generation failed: {exc.__class__.__name__}: {exc}".splitlines()[0])


def setting_error(e: SettingError) -> ApiError:
    """A setting the Sampler or the pipeline refuses, as a 422 naming its field."""
    return ApiError(422, f"{e.name}: {e.reason}", e.name)
