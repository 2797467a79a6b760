"""The public training API: one function per stage, each taking a typed config and a dataset
and returning the trained component with its run folder (:class:`Trained`)::

    from dalle.data import open_data
    from dalle.train import encode, train_clip, train_tokenizer, train_transformer, train_vae

    data = open_data("photos/")                       # or "shapes", or tar shards
    tokenizer = train_tokenizer(data)
    vae = train_vae(data, "runs/vae").model
    tokens = encode(vae, data)
    pipe = train_transformer(tokens, vae, "runs/dalle", tokenizer=tokenizer).model
    pipe.clip = train_clip(data, tokenizer, "runs/clip").model
    images = pipe(["a red circle"]).images

Configs are in :mod:`dalle.train.train_config`; the generic loop under every stage (AdamW, schedule,
accumulation, precision, EMA, checkpoints, exact resume, DDP) is :mod:`dalle.train.loop`.
:func:`choose_sampling` picks the sampling defaults a model ships with (``generation.json``)
on captions of its own data.
"""

from dalle.sampler_choice import choose_sampling
from dalle.train.clip_trainer import train_clip
from dalle.train.run import Trained
from dalle.train.tokenization import encode, train_tokenizer
from dalle.train.train_config import (
    CheckpointConfig,
    CLIPTrainConfig,
    OptimConfig,
    RunConfig,
    TokenizerConfig,
    TransformerTrainConfig,
    VAETrainConfig,
)
from dalle.train.transformer_trainer import train_transformer
from dalle.train.vae_trainer import train_vae

__all__ = [
    "CLIPTrainConfig",
    "CheckpointConfig",
    "OptimConfig",
    "RunConfig",
    "TokenizerConfig",
    "Trained",
    "TransformerTrainConfig",
    "VAETrainConfig",
    "choose_sampling",
    "encode",
    "train_clip",
    "train_tokenizer",
    "train_transformer",
    "train_vae",
]
