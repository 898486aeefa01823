"""Functional interface to the involution ops."""

from typing import Optional, Sequence, Tuple, Union

import torch

IntOrPair = Union[int, Sequence[int]]


def _expand(value: IntOrPair, n: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)):
        raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return value


def _params(n: int, stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair):
    return (_expand(stride, n, "stride"), _expand(padding, n, "padding"),
            _expand(dilation, n, "dilation"))


def involution2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    r"""2-D involution: a per-pixel kernel shared by the channels of each group.

    Args:
        input: ``(B, C, H, W)``.
        weight: ``(B, G, KH, KW, OH, OW)`` with ``C % G == 0``; the kernel of output pixel
            ``(i, j)``, shared by the ``C // G`` channels of each group (contiguous blocks).
        stride, padding, dilation: an int or a pair, as in :func:`torch.nn.functional.conv2d`.

    Returns:
        ``(B, C, OH, OW)`` with ``OH = (H + 2*padding - dilation*(KH-1) - 1) // stride + 1``
        (same for ``OW``), and

        .. math::
            y_{b,c,i,j} = \sum_{u,v} w_{b,g(c),u,v,i,j}\,
                x_{b,c,\,i s_H - p_H + u d_H,\; j s_W - p_W + v d_W}

        with taps outside the image counted as zero. Differentiable in both ``input`` and
        ``weight``, to any order. Supports float64, float32, float16 and bfloat16 (the half
        types accumulate in float32).
    """
    return torch.ops.involution.involution2d(input, weight, *_params(2, stride, padding, dilation))


def involution3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    r"""3-D involution: :func:`involution2d` with a depth axis.

    Args:
        input: ``(B, C, D, H, W)``.
        weight: ``(B, G, KD, KH, KW, OD, OH, OW)`` with ``C % G == 0``.
        stride, padding, dilation: an int or a triple, as in :func:`torch.nn.functional.conv3d`.

    Returns:
        ``(B, C, OD, OH, OW)``, each output size given by the conv formula, and

        .. math::
            y_{b,c,i,j,k} = \sum_{t,u,v} w_{b,g(c),t,u,v,i,j,k}\,
                x_{b,c,\,i s_D - p_D + t d_D,\; j s_H - p_H + u d_H,\; k s_W - p_W + v d_W}

        with taps outside the volume counted as zero. Differentiable to any order; float64,
        float32, float16 and bfloat16.
    """
    return torch.ops.involution.involution3d(input, weight, *_params(3, stride, padding, dilation))


def _fused_params(n: int, kernel_size, stride: IntOrPair, padding: IntOrPair,
                  dilation: IntOrPair):
    if kernel_size is None:
        raise TypeError(f"fused_involution{n}d: kernel_size is required (an int or a sequence "
                        f"of {n} ints)")
    return (_expand(kernel_size, n, "kernel_size"),) + _params(n, stride, padding, dilation)


def fused_involution2d(
    input: torch.Tensor,
    reduced: torch.Tensor,
    span_weight: torch.Tensor,
    span_bias: Optional[torch.Tensor] = None,
    kernel_size: Optional[IntOrPair] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    r"""2-D involution whose kernel is generated inside the op and never stored.

    Equal to (up to rounding)::

        kernel = F.conv2d(reduced, span_weight, span_bias).view(B, G, KH, KW, OH, OW)
        involution2d(input, kernel, stride, padding, dilation)

    but the kernel, ``G*KH*KW`` channels at the output size (about 3x the feature map in
    RedNet), is computed tile by tile where it is used: it is neither written to memory nor
    saved for backward, which recomputes it. Saved for backward: ``input``, ``reduced``,
    ``span_weight`` and ``span_bias``.

    Args:
        input: ``(B, C, H, W)``.
        reduced: ``(B, R, OH, OW)``, the input of the 1x1 span convolution, at the output size.
        span_weight: ``(G*KH*KW, R, 1, 1)``, the span convolution's weight as ``nn.Conv2d``
            stores it; the number of groups G is ``span_weight.shape[0] // (KH*KW)`` and must
            divide C. Output channels are ordered (group, kernel row, kernel column).
        span_bias: ``(G*KH*KW,)`` or None.
        kernel_size: an int or a pair (required).
        stride, padding, dilation: an int or a pair, as in :func:`torch.nn.functional.conv2d`.

    Returns:
        ``(B, C, OH, OW)``, in the memory format of ``input`` (contiguous or channels_last).
        Differentiable in all four tensors, to any order (double backward goes through the
        unfused ops). float64, float32, float16 and bfloat16 (half types accumulate in float32).
    """
    return torch.ops.involution.fused_involution2d(
        input, reduced, span_weight, span_bias,
        *_fused_params(2, kernel_size, stride, padding, dilation))


def fused_involution3d(
    input: torch.Tensor,
    reduced: torch.Tensor,
    span_weight: torch.Tensor,
    span_bias: Optional[torch.Tensor] = None,
    kernel_size: Optional[IntOrPair] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    r"""3-D fused involution: :func:`fused_involution2d` with a depth axis.

    Args:
        input: ``(B, C, D, H, W)``.
        reduced: ``(B, R, OD, OH, OW)``.
        span_weight: ``(G*KD*KH*KW, R, 1, 1, 1)``, as ``nn.Conv3d`` stores a 1x1x1 conv's weight.
        span_bias: ``(G*KD*KH*KW,)`` or None.
        kernel_size, stride, padding, dilation: an int or a triple (kernel_size required).

    Returns:
        ``(B, C, OD, OH, OW)``, equal to
        ``involution3d(input, F.conv3d(reduced, span_weight, span_bias).view(B, G, KD, KH, KW,
        OD, OH, OW), stride, padding, dilation)``.
    """
    return torch.ops.involution.fused_involution3d(
        input, reduced, span_weight, span_bias,
        *_fused_params(3, kernel_size, stride, padding, dilation))
