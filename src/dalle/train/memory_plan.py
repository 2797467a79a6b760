"""How much memory each rank needs to train a transformer, before buying or booking GPUs.

Nothing is allocated: the model is built on PyTorch's ``meta`` device, so its parameter
count is exact for any preset, and one training forward pass (the trainer's own loss) runs on
meta tensors under ``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor the
backward pass will need. Their bytes are this implementation's activation memory, block by
block, for the requested micro-batch: measured, not a formula. (The meta device runs attention unfused, saving the attention matrix;
it is counted as a fused kernel keeps it, its row log-sum-exp, which matches a real CPU pass
to within 1 % on a small model, see ``tests/test_memory_plan.py``.)

Per rank, with ``P`` parameters over ``N`` ranks (fp32 weights, fp32 gradients, AdamW's two
fp32 moments: 16 bytes per parameter, the mixed-precision recipe of Rajbhandari et al. 2020,
"ZeRO", section 3.1, keeps the same fp32 state):

- **DDP**: every rank holds the full state, plus DDP's gradient buckets (4 bytes per
  parameter): ``20 P``.
- **FSDP** (``fully_shard`` per block): the state is sharded, ``16 P / N``, and a rank holds
  at most two blocks' weights gathered (the one running and the one prefetched) and one
  block's full gradients before their reduce-scatter, in the compute dtype.
- **Activation checkpointing** keeps only each block's input and recomputes one block at a
  time in the backward pass: ``L x`` (one block input) + the largest block's activations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dalle.config import TransformerConfig
from dalle.models.dalle_transformer import DALLE

GIB = 1024**3
STATE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments, per parameter
BUCKET_BYTES = 4  # DDP's flat gradient buckets, per parameter
HEADROOM = 0.9  # of a GPU's memory usable by tensors (CUDA context, allocator fragmentation)


@dataclass(frozen=True)
class Activations:
    """Bytes the backward pass keeps for one micro-batch: per block, and outside the blocks
    (embeddings, final norm, head, loss), and one block's input (what checkpointing keeps)."""

    blocks: tuple[int, ...]
    outside: int
    block_input: int

    @property
    def total(self) -> int:
        return sum(self.blocks) + self.outside

    @property
    def checkpointed(self) -> int:
        return self.outside + len(self.blocks) * self.block_input + max(self.blocks)


@dataclass(frozen=True)
class Footprint:
    """One strategy's bytes per rank, and whether it fits."""

    strategy: str
    state: int  # weights, gradients, optimizer moments (and DDP's buckets)
    gathered: int  # FSDP's unsharded blocks in flight
    activations: int
    fits: bool

    @property
    def total(self) -> int:
        return self.state + self.gathered + self.activations


@dataclass(frozen=True)
class Plan:
    cfg: TransformerConfig
    parameters: int
    block_parameters: int
    ranks: int
    batch_per_rank: int
    gpu_bytes: int
    activations: Activations
    footprints: tuple[Footprint, ...]


def meta_model(cfg: TransformerConfig, dtype: torch.dtype = torch.float32) -> DALLE:
    """The transformer with every tensor on the ``meta`` device (no memory)."""
    with torch.device("meta"):
        return DALLE(cfg).to(dtype)


@contextmanager
def _saved_bytes(counts: list[int], weights: set[int], square: int | None) -> Iterator[None]:
    """Add to ``counts[-1]`` the bytes of each tensor saved for backward, a view counted as
    its whole base tensor, once; the parameters (ids in ``weights``) and views of them are
    weights, not activations, and are left out. With ``square``, a saved ``(..., square,
    square)`` attention matrix counts as a fused attention kernel keeps it: its fp32 row
    log-sum-exp."""
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in weights and id(base) not in seen:
            seen.add(id(base))
            if square is not None and base.dim() >= 2 and base.shape[-2:] == (square, square):
                counts[-1] += base.numel() // square * 4
            else:
                counts[-1] += base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def measure_activations(
    model: DALLE, batch: int, device: torch.device | str = "meta", fused_attention: bool = True
) -> Activations:
    """Saved-for-backward bytes of one training loss forward of ``model`` on ``batch``
    random sequences (``device`` ``meta``: nothing allocated; a real device: a real pass).
    On the meta device attention runs its unfused form, which saves the attention matrix;
    ``fused_attention`` counts it as the fused kernels of a real CPU or GPU keep it."""
    from dalle.train.transformer_trainer import loss_terms

    cfg = model.cfg
    text = torch.randint(0, cfg.text_vocab, (batch, cfg.text_len), device=device)
    image = torch.randint(0, cfg.image_vocab, (batch, cfg.image_len), device=device)
    counts = [0]  # the current region: outside, then each block, then outside again
    regions: list[int] = []  # index of each block's region in counts
    inputs: list[int] = []

    def enter(module: torch.nn.Module, args: tuple) -> None:
        inputs.append(args[0].numel() * args[0].element_size())
        regions.append(len(counts))
        counts.append(0)

    def leave(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        counts.append(0)

    hooks = []
    for layer in model.transformer.layers:
        hooks += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    try:
        weights = {id(p) for p in model.parameters()}
        square = cfg.seq_len - 1 if fused_attention else None  # the loss sees seq_len - 1
        with _saved_bytes(counts, weights, square), torch.enable_grad():
            model.train()
            loss_terms(model, text, image, 1 / 8, 7 / 8)
    finally:
        for h in hooks:
            h.remove()
    blocks = tuple(counts[i] for i in regions)
    outside = sum(counts) - sum(blocks)
    return Activations(blocks, outside, max(inputs))


def plan(
    cfg: TransformerConfig,
    ranks: int,
    gpu_memory_gib: float,
    batch_per_rank: int = 1,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> Plan:
    """Per-rank memory of DDP, FSDP and FSDP with activation checkpointing for ``cfg`` on
    ``ranks`` GPUs of ``gpu_memory_gib`` each, at ``batch_per_rank`` sequences per rank and
    activations in ``compute_dtype``."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if gpu_memory_gib <= 0:
        raise ValueError(f"gpu memory must be > 0 GiB, got {gpu_memory_gib}")
    if batch_per_rank < 1:
        raise ValueError(f"batch per rank must be >= 1, got {batch_per_rank}")
    model = meta_model(cfg, compute_dtype)
    n = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.transformer.layers[0].parameters())
    acts = measure_activations(model, batch_per_rank)
    usable = int(gpu_memory_gib * GIB * HEADROOM)
    width = torch.tensor([], dtype=compute_dtype).element_size()
    gathered = (2 + 1) * block * width  # two blocks' weights and one block's gradients
    shard = -(-STATE_BYTES * n // ranks)

    def footprint(name: str, state: int, gather: int, activations: int) -> Footprint:
        return Footprint(name, state, gather, activations, state + gather + activations <= usable)

    rows = (
        footprint("ddp", (STATE_BYTES + BUCKET_BYTES) * n, 0, acts.total),
        footprint("ddp + checkpointing", (STATE_BYTES + BUCKET_BYTES) * n, 0, acts.checkpointed),
        footprint("fsdp", shard, gathered, acts.total),
        footprint("fsdp + checkpointing", shard, gathered, acts.checkpointed),
    )
    return Plan(cfg, n, block, ranks, batch_per_rank, int(gpu_memory_gib * GIB), acts, rows)


def describe(p: Plan) -> str:
    """The plan as a table (GiB per rank), one strategy a row."""
    cfg = p.cfg
    lines = [
        f"transformer: {p.parameters:,} parameters ({cfg.depth} blocks of "
        f"{p.block_parameters:,}; dim {cfg.dim}, {cfg.heads} heads, sequence {cfg.seq_len})",
        f"{p.ranks} rank(s) of {p.gpu_bytes / GIB:.0f} GiB ({HEADROOM:.0%} usable), "
        f"{p.batch_per_rank} sequence(s) per rank; activations measured on the meta device",
        "",
        f"{'strategy':<22}{'state':>10}{'gathered':>10}{'activations':>13}{'total':>10}  fits",
    ]
    for f in p.footprints:
        lines.append(
            f"{f.strategy:<22}{f.state / GIB:>10.1f}{f.gathered / GIB:>10.1f}"
            f"{f.activations / GIB:>13.1f}{f.total / GIB:>10.1f}  {'yes' if f.fits else 'no'}"
        )
    return "\n".join(lines)


def as_dict(p: Plan) -> dict:
    return {
        "parameters": p.parameters,
        "block_parameters": p.block_parameters,
        "ranks": p.ranks,
        "batch_per_rank": p.batch_per_rank,
        "gpu_bytes": p.gpu_bytes,
        "activations": dataclasses.asdict(p.activations),
        "footprints": [dataclasses.asdict(f) | {"total": f.total} for f in p.footprints],
    }
