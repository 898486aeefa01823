"""The pure-PyTorch unfold formulation of involution, as used by most implementations.

It materialises the unfolded input, KH*KW times the size of the input, and the product with the
kernel, of the same size again. It is kept here as the baseline the benchmark measures against
and as an independent reference; do not use it for real work.
"""

from typing import Sequence

import torch
import torch.nn.functional as F


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                dilation: int = 1) -> int:
    """Output size along one axis: the conv formula, which every involution op follows."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def involution2d_unfold(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
) -> torch.Tensor:
    """Same contract as involution.functional.involution2d (pairs only)."""
    b, c, _, _ = input.shape
    _, g, kh, kw, oh, ow = weight.shape
    cols = F.unfold(input, (kh, kw), dilation=tuple(dilation), padding=tuple(padding),
                    stride=tuple(stride))
    cols = cols.view(b, g, c // g, kh * kw, oh, ow)
    out = (weight.reshape(b, g, 1, kh * kw, oh, ow) * cols).sum(dim=3)
    return out.view(b, c, oh, ow)
