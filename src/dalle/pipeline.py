"""Prompts in, images out: the tokenizer, the dVAE and the transformer behind one call.

A saved pipeline is a folder (its layout: ``dalle.model_folder``).
Each part loads with strict checks; a missing or mismatched part is a one-line ``ValueError``.
A call samples with the folder's defaults (``pipe.sampler``), any field overridden per call.
With ``clip/``, a call may rerank (Ramesh et al. 2021, Sec. 2.5): draw ``rerank`` candidates
per requested image and keep those CLIP finds closest to the prompt.

A call may also complete a picture (the paper's image-conditioned generation, Sec. 3.3 and
its Figure 2): the dVAE encodes ``image``, the transformer keeps its top ``keep_rows`` rows of
codes as given and samples the rest under each prompt. An empty prompt then asks for
variations (the all-pad caption that caption dropout trains, "more like this"); reranking a
variation ranks by CLIP's similarity to the source picture instead of to a caption.

``DallePipeline(..., compile=True)`` (or ``from_pretrained(..., compile=True)``) samples
through ``torch.compile``: the first call pays a one-off compile (:attr:`DallePipeline.compile_s`),
later calls take faster steps; without a working compiler, one warning and the eager path.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dalle.completion import repeat_prime, rows_kept
from dalle.config import load_config, to_dict
from dalle.images import ImageInput, prepare_image, tensor_to_image
from dalle.io import write_json_atomic
from dalle.model_folder import (
    CLIP_DIR,
    EXAMPLES_FILE,
    GENERATION_FILE,
    REQUIRED,
    TOKENIZER_FILE,
    TRANSFORMER_DIR,
    VAE_DIR,
    check_compatible,
    read_examples,
)
from dalle.models.clip import CLIP
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.reranking import Reranker, best_distinct
from dalle.sampler import Sampler, compiled_step
from dalle.sampler_settings import SettingError
from dalle.tokenizer import Tokenizer

MAX_CANDIDATES = 65_536  # images sampled in one call: all their codes and pixels stay in memory


@dataclass
class Generation:
    """What a pipeline call returns: ``images`` prompt-major (all of prompt 0, then prompt 1,
    ...), each image's ``prompts`` entry, with reranking each image's CLIP ``scores``
    (cosine similarity to its prompt, or for an empty prompt to the source picture; best
    first within a prompt), and the ``sampler`` the call used. A call with an image
    also returns the code rows it kept (``keep_rows``), the ``source`` as the model saw it
    (converted and resized) and its dVAE ``reconstruction`` (what keeping every row gives)."""

    images: list[Image.Image]
    prompts: list[str]
    scores: list[float] | None = None
    sampler: Sampler | None = None
    keep_rows: int | None = None
    source: Image.Image | None = None
    reconstruction: Image.Image | None = None


@dataclass
class DallePipeline:
    tokenizer: Tokenizer
    vae: DiscreteVAE
    transformer: DALLE
    clip: CLIP | None = None
    examples: list[str] = field(default_factory=list)  # prompts to suggest (``dalle serve``)
    sampler: Sampler = field(default_factory=Sampler)  # a call's defaults
    compile: bool = False  # sample through torch.compile (dalle.sampler.compiled_step)

    def __post_init__(self) -> None:
        check_compatible(self.tokenizer, self.vae, self.transformer, self.clip)
        self.vae.eval()
        self.transformer.eval()
        if self.clip is not None:
            self.clip.eval()

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str = "cpu",
        compile: bool = False,
        *,
        read_defaults: bool = True,
    ) -> DallePipeline:
        """Load a folder written by :meth:`save_pretrained`; ``compile`` as the field. With
        ``read_defaults=False`` its ``generation.json`` is not read (plain sampling): how
        ``dalle train-clip --model`` opens a folder whose defaults rerank by a CLIP it lacks."""
        directory = Path(directory)
        if not directory.is_dir():
            what = "is a file" if directory.exists() else "does not exist"
            raise ValueError(f"model folder {directory} {what} (expected a folder)")
        for part in REQUIRED:
            if not (directory / part).exists():
                raise ValueError(
                    f"{directory} is not a dalle model folder: missing {part} "
                    f"(expected {TOKENIZER_FILE}, {VAE_DIR}/ and {TRANSFORMER_DIR}/)"
                )
        tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
        vae = DiscreteVAE.load(directory / VAE_DIR).to(device)
        transformer = DALLE.load(directory / TRANSFORMER_DIR).to(device)
        has_clip = (directory / CLIP_DIR).exists()
        clip = CLIP.load(directory / CLIP_DIR).to(device) if has_clip else None
        pipe = cls(tokenizer, vae, transformer, clip, read_examples(directory / EXAMPLES_FILE))
        pipe.compile = compile
        if read_defaults:
            pipe.sampler = _read_sampler(directory / GENERATION_FILE, pipe)
        return pipe

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the parts into ``directory`` (each file atomically), the sampler's settings
        as ``generation.json``."""
        self.sampler_for(self.sampler)  # the defaults must suit this pipeline
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(directory / TOKENIZER_FILE)
        self.vae.save(directory / VAE_DIR)
        self.transformer.save(directory / TRANSFORMER_DIR)
        if self.clip is not None:
            self.clip.save(directory / CLIP_DIR)
        if self.examples:
            write_json_atomic(directory / EXAMPLES_FILE, {"prompts": list(self.examples)})
        write_json_atomic(directory / GENERATION_FILE, to_dict(self.sampler))

    @property
    def device(self) -> torch.device:
        return self.transformer.head.weight.device

    @property
    def compile_s(self) -> float:
        """Seconds this process has spent compiling the transformer's decode step (0 without
        :attr:`compile`): the warm-up that later calls no longer pay."""
        return compiled_step(self.transformer).compile_s if self.compile else 0.0

    def encode_prompts(self, prompts: list[str], allow_empty: bool = False) -> torch.Tensor:
        """Prompts -> text ids ``(N, text_len)``; a long one is cut to ``text_len`` tokens with a
        warning. An empty (or blank) prompt is a ``ValueError`` unless ``allow_empty``: then it
        is the all-pad caption, the unconditional one that caption dropout trains."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("expected a non-empty list of prompts")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not (p.strip() or allow_empty):
                raise ValueError(f"prompt {i + 1} is empty")
        n = self.transformer.cfg.text_len
        text = torch.full((len(prompts), n), self.tokenizer.pad_id, dtype=torch.long)
        given = [i for i, p in enumerate(prompts) if p.strip()]
        if given:
            text[given] = self.tokenizer.encode_batch([prompts[i] for i in given], n)[0]
        return text

    def rows_kept(self, keep_rows: int | float | None = None, image: bool = True) -> int | None:
        """The code rows of an image a call keeps (see :func:`dalle.completion.rows_kept`): the
        one check of ``keep_rows``, for the call, the CLI and the server."""
        return rows_kept(keep_rows, self.vae.cfg.grid_size, image)

    def tokens_to_sample(self, keep_rows: int | None) -> int:
        """Image tokens one image samples when ``keep_rows`` code rows are kept (``None``: none)."""
        return self.transformer.cfg.image_len - (keep_rows or 0) * self.vae.cfg.grid_size

    @torch.no_grad()
    def encode_image(self, image: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
        """A picture (path, PIL image, array or tensor) -> ``(pixels (1, 3, S, S) in [0, 1],
        codes (1, h*w))`` on the model's device: converted as training folders are read (RGB,
        alpha dropped; shorter side scaled to the dVAE's size S, bicubic; centre crop; see
        :func:`dalle.images.prepare_image`), then encoded by the dVAE."""
        pixels = prepare_image(image, self.vae.cfg.image_size)[None].to(self.device)
        return pixels, self.vae.encode(pixels)

    @torch.no_grad()
    def generate_codes(
        self,
        prompts: list[str],
        num_images: int = 1,
        seed: int = 0,
        batch_size: int = 16,
        callback: Callable[[int, int], None] | None = None,
        sampler: Sampler | None = None,
        prime: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image codes ``(len(prompts) * num_images, h*w)``, prompt-major: all images of prompt
        0, then prompt 1, ... drawn by ``sampler`` (default: :attr:`sampler`; its ``rerank``
        is the caller's business, see :meth:`__call__`).
        ``prime`` ``(1 or len(prompts), r * grid)`` holds the codes of the first r rows to keep,
        for every prompt or one row per prompt; each image of a prompt keeps them and only the
        rest is sampled (a prompt may then be empty: see :meth:`encode_prompts`). Zero rows
        draw exactly what no ``prime`` draws. ``callback(tokens_done, tokens_total)`` reports
        progress over all images (the sampled tokens only)."""
        s = self.sampler if sampler is None else sampler
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        text = self.encode_prompts(prompts, allow_empty=prime is not None)
        if len(text) * num_images > MAX_CANDIDATES:
            raise ValueError(
                f"{len(text)} prompts x {num_images} images (reranking candidates included) is "
                f"{len(text) * num_images}; expected at most {MAX_CANDIDATES} per call"
            )
        text = text.repeat_interleave(num_images, dim=0)  # (P * num_images, text_len)
        kept = repeat_prime(
            prime, len(prompts), num_images, self.device
        )  # (P * num_images, r * grid)
        generator = torch.Generator(self.device).manual_seed(seed)
        chunks: list[torch.Tensor] = []
        for t in text.split(batch_size):
            done = sum(map(len, chunks))
            step = None
            if callback is not None:
                step = _chunk_progress(callback, done, len(t), len(text))
            codes = s.sample(
                self.transformer,
                t.to(self.device),
                generator=generator,
                prime=None if kept is None else kept[done : done + len(t)],
                callback=step,
                compile=self.compile,
            )
            chunks.append(codes)  # (rows, h*w)
        return torch.cat(chunks)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Codes ``(N, h*w)`` -> images ``(N, C, H, W)`` in [0, 1] on the CPU."""
        return torch.cat([self.vae.decode(c).cpu() for c in codes.split(batch_size)])

    @property
    def reranker(self) -> Reranker:
        """CLIP's scores of candidates (:class:`~dalle.reranking.Reranker`); a ``ValueError``
        without a CLIP model."""
        if self.clip is None:
            raise ValueError(f"scoring images needs a CLIP model: this pipeline has no {CLIP_DIR}/")
        return Reranker(self.clip, self.tokenizer)

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        """CLIP cosine similarity ``(N,)`` of each prompt with its image ``(N, C, H, W)``."""
        return self.reranker.score(prompts, images)

    def sampler_for(self, sampler: Sampler | None = None, **overrides: Any) -> Sampler:
        """The sampler a call uses: ``sampler`` (default: :attr:`sampler`, the model's) with the
        ``overrides`` fields replaced (see :meth:`Sampler.override`), checked against this
        pipeline: reranking needs its CLIP model (a :class:`SettingError` naming ``rerank``)."""
        base = self.sampler if sampler is None else sampler
        if not isinstance(base, Sampler):
            raise ValueError(f"sampler must be a Sampler, got {type(base).__name__}")
        s = base.override(**overrides) if overrides else base
        if s.rerank is not None and self.clip is None:
            raise SettingError(
                "rerank", f"needs a CLIP model, but this pipeline has no {CLIP_DIR}/ "
                "(add one with: dalle train-clip --model MODEL ...)",
            )  # fmt: skip
        return s

    def __call__(
        self,
        prompts: list[str] | str,
        num_images: int = 1,
        seed: int = 0,
        sampler: Sampler | None = None,
        *,
        image: ImageInput | None = None,
        keep_rows: int | float | None = None,
        batch_size: int = 16,
        callback: Callable[[int, int], None] | None = None,
        **overrides: Any,
    ) -> Generation:
        """Generate ``num_images`` images per prompt, drawn by ``sampler`` (default: the
        model's :attr:`sampler`, saved in its folder) with any of its fields given as keywords
        (``temperature=0.7``, ``top_k=None``) replaced. With ``rerank=N`` draw
        ``N * num_images`` candidates per prompt and keep the ``num_images`` distinct ones that
        CLIP scores highest, best first (see :func:`best_distinct`).

        With ``image`` (a path, PIL image, array or tensor; converted as in
        :meth:`encode_image`) every image keeps the picture's top ``keep_rows`` code rows
        exactly and completes the rest under its prompt (see :meth:`rows_kept`: rows or a
        fraction of the height; default half). 0 rows draws what no image draws; all rows
        return the picture's dVAE reconstruction. A prompt may be empty: variations.

        The same arguments (seed included) give the same images. ``callback(tokens_done,
        tokens_total)`` is called after each sampled position, counting image tokens over all
        candidates; an exception it raises stops the call."""
        if isinstance(prompts, str):
            prompts = [prompts]
        s = self.sampler_for(sampler, **overrides)
        rows = self.rows_kept(keep_rows, image is not None)
        pixels = source = prime = None
        if image is not None:
            pixels, source = self.encode_image(image)  # (1, 3, S, S), (1, h*w)
            prime = source[:, : rows * self.vae.cfg.grid_size]
        draws = num_images * (s.rerank or 1)
        codes = self.generate_codes(prompts, draws, seed, batch_size, callback, s, prime)
        images = self.decode(codes)  # (P * draws, C, H, W)
        out = Generation([], [p for p in prompts for _ in range(num_images)], sampler=s)
        if pixels is not None:
            out.keep_rows = rows
            out.source = tensor_to_image(pixels[0])
            out.reconstruction = tensor_to_image(self.decode(source)[0])
        if s.rerank is None:
            out.images = [tensor_to_image(x) for x in images]
            return out
        per_draw = [p for p in prompts for _ in range(draws)]
        scores = self.reranker.candidates(per_draw, images, pixels)
        keep = [
            j * draws + i
            for j in range(len(prompts))
            for i in best_distinct(
                scores[j * draws : (j + 1) * draws], images[j * draws : (j + 1) * draws], num_images
            )
        ]
        out.images, out.scores = [tensor_to_image(images[i]) for i in keep], scores[keep].tolist()
        return out


def _chunk_progress(
    callback: Callable[[int, int], None], rows_before: int, rows: int, rows_total: int
) -> Callable[[int, int], None]:
    """Positions sampled in one chunk of ``rows`` images -> tokens done over all images."""

    def step(done: int, positions: int) -> None:
        callback(rows_before * positions + done * rows, rows_total * positions)

    return step


def _read_sampler(path: Path, pipe: DallePipeline) -> Sampler:
    """The sampling defaults of a ``generation.json`` (plain sampling without one), checked
    against the pipeline they will drive."""
    if not path.exists():
        return Sampler()
    try:
        return pipe.sampler_for(load_config(Sampler, path))
    except SettingError as e:
        raise ValueError(f"{path}: {e} (remove {e.name} from the file)") from None
