"""Gaussian distance expansions with the far tails set to exactly zero.

A Gaussian basis exp(-(d - mu)^2 / w^2) over 0–8 Å puts most of its values below float32's
smallest normal number (about 1.2e-38, reached at an exponent of 87.3): for CGCNN's 0.2 Å width
every centre more than 1.9 Å away from the distance. Many x86 CPUs (Intel's among them) take a
slow microcode path for every multiply-add that reads such a denormal number, and the linear
layers that consume the basis read all of them. Values whose exponent reaches 60 (exp(-60) ≈
9e-27, far below float32's resolution of anything they are summed with) are therefore set to
zero, and exp() only sees exponents clamped to 60 (it is several times slower on arguments whose
results underflow). A 2-core Intel Xeon then trained SchNet 4× faster (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Exponents at or above this give a basis value of exactly zero instead of exp(-exponent).
ZERO_BEYOND_EXPONENT = 60.0


def truncated_gaussians(distances: Tensor, centers: Tensor, inverse_variance: float) -> Tensor:
    """exp(-(d - mu_k)^2 * inverse_variance), shape (*distances.shape, K); zero where the exponent reaches 60."""
    exponent = (distances.unsqueeze(-1) - centers) ** 2 * inverse_variance
    # exp() is about 4x slower on the arguments whose results underflow, so it sees only clamped ones.
    tails_clamped = torch.exp(-exponent.clamp(max=ZERO_BEYOND_EXPONENT))
    return torch.where(exponent < ZERO_BEYOND_EXPONENT, tails_clamped, 0.0)
