"""Byte-level BPE caption tokenizer (DALL-E paper, section 2.2: captions as BPE tokens).

Built on Hugging Face ``tokenizers``. Text is normalised (Unicode NFKC, lower case, each run
of whitespace made one space, ends stripped), then split into UTF-8 bytes, so any string
encodes: a character never seen in training falls back to its byte tokens. Id 0 is
``[PAD]``, the only special token; every real token has an id >= 1. ``encode`` returns a
fixed-length row padded with ``pad_id`` and the true length, which the transformer uses to
swap padding for per-position pad tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as _Backend

from dalle.io import write_bytes_atomic

PAD = "[PAD]"
SPECIAL_TOKENS = (PAD,)  # ids 0 .. len(SPECIAL_TOKENS) - 1
BYTE_ALPHABET = 256  # byte-level BPE starts from one token per byte value
MIN_VOCAB_SIZE = BYTE_ALPHABET + len(SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 2**20  # the trainer allocates per id up front: a huge size aborts the process


def _valid_unicode(text: str) -> str:
    """Replace lone surrogates (e.g. undecodable bytes in ``sys.argv``) with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Tokenizer:
    """Byte-level BPE: ``train`` on captions, ``encode`` to fixed-length ids, ``decode`` back."""

    def __init__(self, backend: _Backend) -> None:
        if backend.token_to_id(PAD) != 0:
            raise ValueError(f"not a dalle tokenizer: expected {PAD} at id 0")
        # Caption text "[PAD]" must be encoded as bytes, never as the padding id.
        backend.encode_special_tokens = True  # not saved by to_str(), so set on every load
        self._backend = backend
        self._warned_truncation = False

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int) -> Tokenizer:
        """Learn BPE merges from ``captions``; the result may be smaller than ``vocab_size``
        when the captions run out of pairs to merge (read ``vocab_size`` afterwards)."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be >= {MIN_VOCAB_SIZE} ({BYTE_ALPHABET} byte tokens + "
                f"{len(SPECIAL_TOKENS)} special), got {vocab_size}"
            )
        if vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be <= {MAX_VOCAB_SIZE}, got {vocab_size}")
        texts = [_valid_unicode(c) for c in captions if c.strip()]
        if not texts:
            raise ValueError("no captions to train the tokenizer on")
        backend = _Backend(models.BPE())
        backend.normalizer = normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.Lowercase(),
                normalizers.Replace(Regex(r"\s+"), " "),  # "a  red\tcircle" -> "a red circle"
                normalizers.Strip(),
            ]
        )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]`` (always 0)."""
        return 0

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included: every id is in ``[0, vocab_size)``."""
        return self._backend.get_vocab_size()

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (see the module docstring); ``decode`` returns it."""
        return self._backend.normalizer.normalize_str(_valid_unicode(text))

    def tokenize(self, text: str) -> list[int]:
        """All ids of one caption: no padding, no truncation; ValueError if it is empty."""
        if not isinstance(text, str):
            raise ValueError(f"caption must be a str, got {type(text).__name__}")
        text = _valid_unicode(text)
        if not self._backend.normalizer.normalize_str(text).strip():
            raise ValueError("caption is empty")
        return self._backend.encode(text).ids

    def _fit(self, text: str, text_len: int) -> list[int]:
        """``tokenize`` cut to ``text_len`` ids; the first cut of this tokenizer warns."""
        ids = self.tokenize(text)
        if len(ids) > text_len:
            if not self._warned_truncation:
                self._warned_truncation = True
                warnings.warn(
                    f"caption of {len(ids)} tokens truncated to text_len={text_len} "
                    f"(further truncations are not reported): {text[:60]!r}",
                    stacklevel=3,
                )
            ids = ids[:text_len]
        return ids

    def encode(self, text: str, text_len: int) -> tuple[torch.Tensor, int]:
        """Caption -> (ids ``(text_len,)`` long, padded with ``pad_id``; true length >= 1)."""
        _check_text_len(text_len)
        ids = self._fit(text, text_len)
        out = torch.full((text_len,), self.pad_id, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out, len(ids)

    def encode_batch(
        self, texts: Sequence[str], text_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids ``(B, text_len)`` long, lengths ``(B,)`` long).

        Encodes one caption at a time on purpose: the backend's batch call starts a thread
        pool, which makes later DataLoader worker forks disable tokenizer parallelism."""
        _check_text_len(text_len)
        if isinstance(texts, str):
            raise ValueError("encode_batch expects a list of captions, got one str")
        out = torch.full((len(texts), text_len), self.pad_id, dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self._fit(text, text_len)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            lengths[i] = len(ids)
        return out, lengths

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """1-D ids (tensor or list) -> normalised text; padding ids are skipped."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects 1-D ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids, size = [int(i) for i in ids], self.vocab_size
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary [0, {size})")
        return self._backend.decode([i for i in ids if i != self.pad_id])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file (atomically; parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, self._backend.to_str(pretty=True).encode())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by ``save``; ValueError naming ``path`` if it is not one."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ValueError(f"tokenizer file {path} {what} (expected a tokenizer JSON file)")
        try:
            backend = _Backend.from_str(path.read_text(encoding="utf-8"))
        except Exception as e:  # the backend raises a bare Exception on a malformed file
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path} is not a tokenizer JSON file ({reason})") from None
        if backend.token_to_id(PAD) != 0:
            raise ValueError(f"{path} is not a dalle tokenizer: expected {PAD} at id 0")
        return cls(backend)

    def __reduce__(self) -> tuple:  # pickle via JSON (DataLoader workers with spawn)
        return _from_json, (self._backend.to_str(),)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id})"


def _from_json(text: str) -> Tokenizer:
    return Tokenizer(_Backend.from_str(text))


def _check_text_len(text_len: int) -> None:
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
        raise ValueError(f"text_len must be a positive integer, got {text_len!r}")


def read_captions(folder: str | Path) -> list[str]:
    """Every non-empty line of every ``.txt`` file under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"caption folder {folder} does not exist or is not a folder")
    captions: list[str] = []
    for file in sorted(folder.rglob("*.txt")):
        if not file.is_file():
            continue
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{file} is not UTF-8 text (byte {e.start})") from None
        captions += [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"no captions found in .txt files under {folder}")
    return captions
