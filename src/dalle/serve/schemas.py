"""Request and response bodies of the HTTP API: pydantic models, published in ``/openapi.json``.

The request model is strict (no unknown fields, no strings for numbers, no booleans for
integers), so a typo or a wrong type is a 422 naming the field rather than a silent default.
A sampling field the request leaves out takes the model's default (its ``generation.json``,
shown by ``GET /v1/model``); one it gives overrides it, and ``null`` turns an optional one
(a Sampler setting that can be off) off. With ``image`` (base64, checked by ``dalle.serve.uploads``) the
images complete that picture, keeping its top ``keep_rows`` code rows; the prompt may then be
empty (variations). The checks that need the model or the decoded picture are in ``app.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from dalle.sampler_settings import SamplerSettings
from dalle.serve.uploads import FORMATS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

MAX_IMAGES = 16
MAX_RERANK = 16
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1


MODEL_DEFAULT = "; omitted: the model's default (GET /v1/model)"


class _Prompt(BaseModel):
    """What to draw."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"prompt": "a small red circle", "num_images": 4}]},
    )

    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="the caption; may be empty (blank) only with an image: variations",
    )
    num_images: int = Field(4, ge=1, le=MAX_IMAGES, description="images to return")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="reproduces the images; omitted: the server draws one"
    )


def _sampler_field(f: dataclasses.Field) -> tuple[Any, Any]:
    """A request field for a :class:`~dalle.sampler.Sampler` setting: its type (``| None`` for
    one that ``null`` turns off), the server's cap (:data:`SERVER_LIMITS`), and a default of
    ``None`` that stands for "not given" (app.py reads the fields the request set). Its range
    is the Sampler's to check."""
    kind = int if f.metadata["kind"] == "count" else float
    optional = f.default is None
    off = "; null: off" if optional else ""
    limits = {"allow_inf_nan": False} if kind is float else {}
    field = Field(
        None, description=f.metadata["help"] + off + MODEL_DEFAULT,
        **limits, **SERVER_LIMITS.get(f.name, {}),
    )  # fmt: skip
    return (kind | None if optional else kind), field


# How far the server lets a request go, past the Sampler's own ranges (its cost and sense).
SERVER_LIMITS: dict[str, dict[str, Any]] = {
    "temperature": {"le": 10},
    "cond_scale": {"ge": 0, "le": 20},
    "rerank": {"le": MAX_RERANK},
}

# Every Sampler setting, in its order, after the prompt fields.
_Sampling = create_model(
    "_Sampling",
    __base__=_Prompt,
    **{f.name: _sampler_field(f) for f in dataclasses.fields(SamplerSettings)},
)


class GenerateRequest(_Sampling):  # type: ignore[misc, valid-type]
    """What to draw and how to sample it (one field per ``dalle.sampler.Sampler`` setting);
    the sampling fields left out take the model's defaults."""

    image: str | None = Field(
        None,
        description=f"a picture to complete: {', '.join(FORMATS)} bytes in base64 (a data: URL "
        f"prefix is allowed), at most {MAX_IMAGE_BYTES} bytes and {MAX_IMAGE_PIXELS} pixels; "
        "read as RGB (alpha dropped), the shorter side scaled to the model's size (bicubic), "
        "the centre cropped",
    )
    keep_rows: int | None = Field(
        None,
        ge=0,
        description="with image: the code rows to keep from its top, 0 to the grid side "
        "(GET /v1/model: transformer.image_grid); all of them return its dVAE reconstruction; "
        "omitted: half, rounded up",
    )


class GeneratedImage(BaseModel):
    png_base64: str = Field(description="the image as a base64-encoded PNG")
    seed: int = Field(description="the request's seed: the same request with it redraws this")
    index: int = Field(description="the image's place in the response, from 0")
    score: float | None = Field(None, description="CLIP similarity to the prompt (with rerank)")


class GenerateResponse(BaseModel):
    prompt: str
    images: list[GeneratedImage]
    keep_rows: int | None = Field(None, description="with an image: the code rows kept")
    elapsed_s: float = Field(description="seconds from admission to the last image, queue included")


class Error(BaseModel):
    """Every error answer: one line, and the request field at fault where there is one."""

    detail: str
    field: str | None = None


class QueueState(BaseModel):
    running: int
    waiting: int
    capacity: int = Field(description="requests that may wait behind the running one")


class Health(BaseModel):
    status: str
    model: str
    image_size: int
    device: str
    queue: QueueState


class ModelInfo(BaseModel):
    name: str
    device: str
    image_size: int
    has_clip: bool
    tokenizer: dict[str, Any]
    vae: dict[str, Any]
    transformer: dict[str, Any]
    clip: dict[str, Any] | None
    sampling: dict[str, Any] = Field(
        description="the model's sampling defaults (its generation.json), used for the fields "
        "a request leaves out"
    )
    limits: dict[str, Any]


class Examples(BaseModel):
    prompts: list[str]
