"""Import OpenAI's released dVAE (``encoder.pkl`` / ``decoder.pkl`` of the ``dall-e`` package).

OpenAI released only the discrete VAE of DALL-E (Ramesh et al. 2021, Sec. 2.1), as whole
modules pickled with ``torch.save`` (github.com/openai/DALL-E). Unpickling a module normally
imports its classes and runs whatever the file names, so this loader never calls
``torch.load``: it reads the ``torch.save`` zip archive (torch >= 1.6) with ``zipfile`` and a
restricted unpickler that allows only tensor rebuilding, ``OrderedDict``/``set``, and the
module classes of ``dall_e`` and ``torch.nn``, each replaced by an inert stand-in that keeps
the pickled attributes. Anything else is refused with a ``ValueError`` before it runs. The
``dall_e`` package is never imported. The pre-1.6 (non-zip) ``torch.save`` format is refused,
and so is an archive with compressed entries (``torch.save`` writes none; a small file that
inflates to gigabytes would exhaust memory).

The weights ``w``/``b`` are copied by dotted path into :class:`DiscreteVAE`, whose layer names
match OpenAI's, with strict name, shape and residual-gain checks.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalle.config import VAEConfig
from dalle.models.vae import DiscreteVAE

# OpenAI's Encoder/Decoder keep ``group_count = 4`` as a class attribute, not in the instance.
OPENAI_GROUP_COUNT = 4

_MODULE_CLASSES = {
    "dall_e.encoder": ("Encoder", "EncoderBlock"),
    "dall_e.decoder": ("Decoder", "DecoderBlock"),
    "dall_e.utils": ("Conv2d",),
    "torch.nn.modules.activation": ("ReLU",),
    "torch.nn.modules.pooling": ("MaxPool2d",),
    "torch.nn.modules.upsampling": ("Upsample",),
    "torch.nn.modules.container": ("Sequential",),
    "torch.nn.modules.linear": ("Identity",),
}
_STORAGE_DTYPES = {  # a dVAE holds float weights only
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
}


class _Stub:
    """Inert stand-in for a pickled module: remembers its class name and pickled ``__dict__``."""

    name = ""
    state: dict[str, Any] = {}  # until __setstate__ sets the pickled one; never mutated

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"unexpected pickled state for {self.name}: {type(state).__name__}")
        self.state: dict[str, Any] = state


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)  # a pickled torch.device stays a plain string


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise ValueError("tensor record without a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)  # checks the bounds


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # a Parameter is just its tensor here


# Every global the unpickler may resolve; module classes become inert stand-ins (no imports).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 names
    ("torch", "device"): _device,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", n): _StorageType(dtype) for n, dtype in _STORAGE_DTYPES.items()},
    **{
        (m, n): type(n, (_Stub,), {"name": f"{m}.{n}"})
        for m, names in _MODULE_CLASSES.items()
        for n in names
    },
}


class _DVAEUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a ``torch.save`` archive, allowing only the globals above."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(archive.open(prefix + "data.pkl"))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise ValueError(
                f"refusing to unpickle {module}.{name} from {self.source}: not a known dVAE class"
            )
        return _ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        # ('storage', storage type, key, location, numel): raw bytes in <prefix>data/<key>
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"{self.source}: unexpected persistent record {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(numel, int):
            raise ValueError(f"{self.source}: malformed storage record for key {key!r:.40}")
        if key not in self.storages:
            try:
                info = self.archive.getinfo(f"{self.prefix}data/{key}")
            except KeyError:
                raise ValueError(f"{self.source}: no storage {key!r:.40} in the archive") from None
            if info.file_size != numel * kind.dtype.itemsize:  # checked before reading it
                raise ValueError(f"{self.source}: storage {key} is not {numel} x {kind.dtype}")
            raw = self.archive.read(info)
            # (numel,) flat storage; the tensors are strided views of it
            flat = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else torch.empty(0)
            self.storages[key] = flat.to(kind.dtype)
        return self.storages[key]


def read_pickled_module(path: str | Path) -> _Stub:
    """Read a ``torch.save``-d module as an inert tree of stand-ins, running no code from it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path} is a folder, not a file" if path.is_dir() else f"missing file {path}"
        )
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(2)
        if len(head) == 2 and head[0] == 0x80 and head[1] <= 5:  # pickle PROTO opcode
            raise ValueError(f"{path}: a bare pickle (torch < 1.6 format?), not a zip archive")
        raise ValueError(f"{path}: not a torch.save zip archive")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(names) != 1:
            raise ValueError(f"{path}: not a torch.save archive (no <name>/data.pkl entry)")
        prefix = names[0][: -len("data.pkl")]
        if any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()):
            raise ValueError(f"{path}: compressed entries (torch.save stores them uncompressed)")
        order = f"{prefix}byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise ValueError(f"{path}: only little-endian archives are supported")
        try:
            obj = _DVAEUnpickler(archive, prefix, path.name).load()
        except ValueError:
            raise
        except Exception as e:  # corrupt or truncated pickle streams raise many types
            raise ValueError(f"{path}: cannot read the pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, _Stub):
        raise ValueError(f"{path}: expected a pickled module, got {type(obj).__name__}")
    return obj


def _table(stub: _Stub, key: str) -> dict[str, Any]:
    """One of the name -> value tables of a module (``_modules``, ``_parameters``, ...)."""
    table = stub.state.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{stub.name}.{key} is {type(table).__name__}, not a dict")
    return table


def _walk(stub: _Stub, prefix: str = "") -> Iterator[tuple[str, _Stub]]:
    """Yield ``(dotted path, stub)`` for ``stub`` and every sub-module, depth first."""
    yield prefix.rstrip("."), stub
    for name, child in _table(stub, "_modules").items():
        if not isinstance(child, _Stub):
            raise ValueError(f"sub-module {prefix}{name} is {type(child).__name__}, not a module")
        yield from _walk(child, f"{prefix}{name}.")


def _tensors(root: _Stub) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, stub in _walk(root):
        for group in ("_parameters", "_buffers"):
            for name, t in _table(stub, group).items():
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"{path}.{name} is {type(t).__name__}, not a tensor")
                out[f"{path}.{name}" if path else name] = t
    return out


def _int_attr(stub: _Stub, name: str, source: str, default: int | None = None) -> int:
    value = stub.state.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{source}: attribute {name} should be an int, got {value!r:.40}")
    return value


def _expect_kind(stub: _Stub, kind: str, source: str) -> None:
    if stub.name.rsplit(".", 1)[-1] != kind:
        raise ValueError(f"{source}: expected a pickled dall_e {kind}, got {stub.name}")


def _fill(ours: nn.Module, theirs: _Stub, source: str) -> None:
    """Copy every tensor of ``theirs`` into ``ours`` by dotted path; any mismatch is an error."""
    tensors, expected = _tensors(theirs), ours.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: weights differ: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, t in tensors.items():
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want or not t.is_floating_point():
            raise ValueError(f"{source}: {name} is {t.dtype} {tuple(t.shape)}, expected {want}")
    modules = dict(ours.named_modules())
    for path, stub in _walk(theirs):  # residual gain 1 / n_layers**2 must agree block by block
        gain, mine = stub.state.get("post_gain"), getattr(modules.get(path), "post_gain", None)
        if gain != mine:
            raise ValueError(f"{source}: {path}.post_gain is {gain}, our config gives {mine}")
    ours.load_state_dict(tensors, strict=True)  # copies (and casts) into our parameters


def load_openai_dvae(
    encoder_pkl: str | Path, decoder_pkl: str | Path, image_size: int = 256
) -> DiscreteVAE:
    """Build a :class:`DiscreteVAE` from OpenAI's ``encoder.pkl`` and ``decoder.pkl``, in eval mode.

    The architecture comes from the pickled attributes (``vocab_size``, ``n_hid``,
    ``n_blk_per_group``, ``n_init``, channels, ``group_count``); ``image_size`` (pixels) is
    not stored in the release, which was trained at 256.
    """
    enc, dec = read_pickled_module(encoder_pkl), read_pickled_module(decoder_pkl)
    e_src, d_src = Path(encoder_pkl).name, Path(decoder_pkl).name
    _expect_kind(enc, "Encoder", e_src)
    _expect_kind(dec, "Decoder", d_src)
    shared = {}  # attributes both modules carry must agree
    for e_name, d_name in [
        ("vocab_size",) * 2,
        ("n_hid",) * 2,
        ("n_blk_per_group",) * 2,
        ("input_channels", "output_channels"),
        ("group_count",) * 2,
    ]:
        dflt = OPENAI_GROUP_COUNT if e_name == "group_count" else None
        e_val, d_val = _int_attr(enc, e_name, e_src, dflt), _int_attr(dec, d_name, d_src, dflt)
        if e_val != d_val:
            raise ValueError(f"{e_src} and {d_src} disagree on {e_name}: {e_val} vs {d_val}")
        shared[e_name] = e_val
    if not 2 <= shared["group_count"] <= 5:  # VAEConfig's downsample 2 .. 16
        raise ValueError(f"group_count {shared['group_count']} is not supported (2 to 5)")
    try:
        cfg = VAEConfig(
            image_size=image_size,
            channels=shared["input_channels"],
            downsample=2 ** (shared["group_count"] - 1),
            vocab_size=shared["vocab_size"],
            n_hid=shared["n_hid"],
            n_blk_per_group=shared["n_blk_per_group"],
            n_init=_int_attr(dec, "n_init", d_src),
        )
    except ValueError as e:
        raise ValueError(f"the OpenAI dVAE does not fit a VAEConfig: {e}") from None
    vae = DiscreteVAE(cfg)
    _fill(vae.encoder, enc, e_src)
    _fill(vae.decoder, dec, d_src)
    return vae.eval()


def import_openai_dvae(
    encoder_pkl: str | Path,
    decoder_pkl: str | Path,
    out_dir: str | Path,
    image_size: int = 256,
    force: bool = False,
) -> DiscreteVAE:
    """Load OpenAI's dVAE and write it as our component folder (``config.json`` + safetensors).
    Both files are read and checked before ``out_dir`` is touched; a non-empty ``out_dir`` is
    refused unless ``force``."""
    from dalle.io import prepare_output_dir

    vae = load_openai_dvae(encoder_pkl, decoder_pkl, image_size=image_size)
    vae.save(prepare_output_dir(Path(out_dir), force=force))
    return vae
