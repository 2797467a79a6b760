"""Product codebooks (our extension of the paper's flat dVAE codebook, Sec. 2.1).

A product codebook of ``P`` patterns and ``C`` colours has ``K = P * C`` codes; code
``k = p * C + c`` pairs pattern ``p`` with colour ``c``. Models score and embed such codes
through their two factors, so a pair never seen together in training still has a logit and an
embedding made of parts that were trained. Both the dVAE and the transformer use these.
"""

from __future__ import annotations

import torch


def product_logits(factors: torch.Tensor, palette: int) -> torch.Tensor:
    """``(..., P + C)`` pattern then colour logits -> ``(..., P * C)`` code logits, the logit of
    code ``p * C + c`` being ``pattern[p] + colour[c]`` (so its softmax is the product of the
    two factors' softmaxes)."""
    pattern, colour = factors[..., :-palette], factors[..., -palette:]
    return (pattern[..., :, None] + colour[..., None, :]).flatten(-2)


def split_codes(codes: torch.Tensor, palette: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer product codes -> ``(pattern, colour)`` ids of the same shape."""
    return codes // palette, codes % palette


def code_marginals(z: torch.Tensor, palette: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., P * C)`` weights over product codes -> their pattern marginal ``(..., P)`` and
    colour marginal ``(..., C)`` (a one-hot code becomes two one-hots)."""
    z = z.unflatten(-1, (-1, palette))  # (..., P, C)
    return z.sum(-1), z.sum(-2)
