"""The progress callback of ``sample_codes`` and ``DallePipeline``: one call per sampled position
with (done, total), token counts over every image in the pipeline, no change to the codes, and
an exception from the callback stops sampling (how the server enforces its time limit)."""

from __future__ import annotations

import pytest
import torch

from dalle.config import TransformerConfig, VAEConfig
from dalle.data.shapes import make_sample
from dalle.models.dalle_transformer import DALLE
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.tokenizer import Tokenizer
from model_fixtures import sample_codes

CFG = TransformerConfig(text_vocab=20, text_len=4, image_vocab=12, image_grid=3, dim=16, depth=1,
                        heads=2, attention=("full",))  # fmt: skip
TEXT = torch.tensor([[3, 5, 0, 0], [7, 1, 2, 9]])


@pytest.fixture(scope="module")
def model() -> DALLE:
    torch.manual_seed(0)
    return DALLE(CFG).eval()


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_call_per_position_and_the_same_codes(model, use_cache):
    calls: list[tuple[int, int]] = []
    g = torch.Generator().manual_seed(3)
    codes = sample_codes(
        model, TEXT, generator=g, use_cache=use_cache, callback=lambda *a: calls.append(a)
    )
    assert calls == [(i, 9) for i in range(1, 10)]
    assert torch.equal(codes, sample_codes(model, TEXT, generator=torch.Generator().manual_seed(3)))


def test_primed_rows_are_not_counted(model):
    calls: list[tuple[int, int]] = []
    prime = torch.randint(0, 12, (2, 3))  # the first row of the 3 x 3 grid
    sample_codes(
        model, TEXT, generator=torch.Generator(), prime=prime, callback=lambda *a: calls.append(a)
    )
    assert calls == [(i, 6) for i in range(1, 7)]


def test_an_exception_in_the_callback_stops_sampling(model):
    def stop(done: int, total: int) -> None:
        if done == 4:
            raise TimeoutError("enough")

    with pytest.raises(TimeoutError, match="enough"):
        sample_codes(model, TEXT, generator=torch.Generator(), callback=stop)
    assert not model.training


def test_pipeline_counts_tokens_over_all_images_and_batches():
    torch.manual_seed(0)
    tok = Tokenizer.train([make_sample(0, "train", i).caption for i in range(100)], 300)
    vae = DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8))
    cfg = TransformerConfig(text_vocab=tok.vocab_size, text_len=16, image_vocab=16, image_grid=4,
                            dim=16, depth=1, heads=2, attention=("full",))  # fmt: skip
    pipe = DallePipeline(tok, vae, DALLE(cfg))
    calls: list[tuple[int, int]] = []
    out = pipe(["a red circle", "a blue square"], num_images=3, seed=1, batch_size=4,
               callback=lambda *a: calls.append(a))  # fmt: skip
    total = 2 * 3 * 16  # 6 images of 16 codes, in batches of 4 and 2
    assert [d for d, _ in calls] == [4 * i for i in range(1, 17)] + [
        64 + 2 * i for i in range(1, 17)
    ]
    assert {t for _, t in calls} == {total}
    plain = pipe(["a red circle", "a blue square"], num_images=3, seed=1, batch_size=4)
    assert [im.tobytes() for im in out.images] == [im.tobytes() for im in plain.images]
