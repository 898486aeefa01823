"""nn.Module wrappers: the kernel-generation branch around the involution op."""

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import _expand

IntOrPair = Union[int, Sequence[int]]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _pair_at_least(value: IntOrPair, name: str, minimum: int) -> Tuple[int, int]:
    pair = _expand(value, 2, name)
    if any(v < minimum for v in pair):
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    return pair  # type: ignore[return-value]


class Involution2d(nn.Module):
    """2-D involution layer, a drop-in replacement for the widely used pure-PyTorch module.

    The constructor, attribute and submodule names are the seed module's, so its state_dicts
    load unchanged and give the same output (up to float rounding). The aggregation runs in the
    compiled op instead of ``nn.Unfold``, so no tensor of KH*KW times the input is allocated.

    Data flow::

        kernel = span_mapping(sigma_mapping(reduce_mapping(pool(input))))  # (B, G*KH*KW, OH, OW)
        output = involution2d(initial_mapping(input), kernel.view(B, G, KH, KW, OH, OW), ...)

    ``pool`` brings the kernel branch to the output size (OH, OW) given by the conv formula:

    * ``o_mapping`` (``AvgPool2d(stride, stride)``), as in the seed, when that already gives
      (OH, OW), which is the case for "same" padding and sizes divisible by the stride;
    * average pooling with ``ceil_mode=True`` when that gives (OH, OW): odd sizes with
      stride > 1 and "same" padding, where the seed crashes;
    * ``adaptive_avg_pool2d`` to (OH, OW) otherwise (non-"same" padding, even kernels), where
      the seed crashes, and always when ``force_shape_match=True`` (the seed then pooled twice
      when stride > 1).

    Args:
        in_channels, out_channels: channels in and out; ``out_channels % groups == 0``.
        sigma_mapping: module applied after the reduce conv; default
            ``Sequential(BatchNorm2d(out_channels // reduce_ratio, momentum=0.3), ReLU())``.
        kernel_size, stride, groups, dilation, padding: as in conv2d (int or pair). The
            defaults are the seed's (7x7, stride 1, padding 3).
        reduce_ratio: the reduce conv has ``out_channels // reduce_ratio`` channels.
        bias: bias on every 1x1 conv.
        force_shape_match: always pool the kernel branch adaptively to the output size.
        **kwargs: accepted for compatibility, ignored, and reported with a warning.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        sigma_mapping: Optional[nn.Module] = None,
        kernel_size: IntOrPair = (7, 7),
        stride: IntOrPair = (1, 1),
        groups: int = 1,
        reduce_ratio: int = 1,
        dilation: IntOrPair = (1, 1),
        padding: IntOrPair = (3, 3),
        bias: bool = False,
        force_shape_match: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            warnings.warn(
                "Involution2d ignores the unexpected keyword argument(s) "
                f"{', '.join(sorted(kwargs))}; is one of them misspelt?",
                UserWarning,
                stacklevel=2,
            )
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        self.reduce_ratio = _positive_int(reduce_ratio, "reduce_ratio")
        if out_channels % groups != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if out_channels // reduce_ratio < 1:
            raise ValueError(
                f"reduce_ratio ({reduce_ratio}) must not exceed out_channels ({out_channels})"
            )
        if sigma_mapping is not None and not isinstance(sigma_mapping, nn.Module):
            raise TypeError(f"sigma_mapping must be an nn.Module or None, got {sigma_mapping!r}")
        if not isinstance(bias, bool) or not isinstance(force_shape_match, bool):
            raise TypeError("bias and force_shape_match must be bools")
        self.kernel_size = _pair_at_least(kernel_size, "kernel_size", 1)
        self.stride = _pair_at_least(stride, "stride", 1)
        self.dilation = _pair_at_least(dilation, "dilation", 1)
        self.padding = _pair_at_least(padding, "padding", 0)
        self.bias = bias
        self.force_shape_match = force_shape_match

        reduced = out_channels // reduce_ratio
        self.sigma_mapping = (
            sigma_mapping
            if sigma_mapping is not None
            else nn.Sequential(nn.BatchNorm2d(reduced, momentum=0.3), nn.ReLU())
        )
        self.initial_mapping = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.o_mapping = nn.AvgPool2d(kernel_size=self.stride, stride=self.stride)
        self.reduce_mapping = nn.Conv2d(in_channels, reduced, kernel_size=1, bias=bias)
        self.span_mapping = nn.Conv2d(
            reduced, self.kernel_size[0] * self.kernel_size[1] * groups, kernel_size=1, bias=bias
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, reduce_ratio={self.reduce_ratio}, bias={self.bias}"
        )
        if self.force_shape_match:
            s += ", force_shape_match=True"
        return s

    # The kernel branch must be built at the op's output size before the op runs, so this mirrors
    # the conv formula of csrc/ops/checks.cpp; the op re-checks the kernel's size against it.
    def _output_extent(self, size: int, axis: int) -> int:
        k = self.kernel_size[axis]
        return (
            size + 2 * self.padding[axis] - self.dilation[axis] * (k - 1) - 1
        ) // self.stride[axis] + 1

    def _kernel_branch_input(self, input: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        h, w = input.shape[-2], input.shape[-1]
        sh, sw = self.stride[0], self.stride[1]
        if not self.force_shape_match:
            if h // sh == out_h and w // sw == out_w:
                return self.o_mapping(input)
            if (h + sh - 1) // sh == out_h and (w + sw - 1) // sw == out_w:
                # The last window overhangs and averages what it covers. count_include_pad=False
                # gives the same numbers as the default here (no explicit padding) and avoids
                # inductor's wrong backward for the default (pytorch/pytorch#198119).
                return F.avg_pool2d(
                    input, [sh, sw], [sh, sw], ceil_mode=True, count_include_pad=False
                )
        return F.adaptive_avg_pool2d(input, [out_h, out_w])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4:
            raise ValueError(
                "Involution2d: expected a 4-D input (B, C, H, W), but got a "
                + str(input.dim())
                + "-D tensor"
            )
        out_h = self._output_extent(input.shape[2], 0)
        out_w = self._output_extent(input.shape[3], 1)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                "Involution2d: the dilated kernel is larger than the padded input (input size "
                + str(list(input.shape[2:]))
                + "): output size would be < 1"
            )
        kernel = self.span_mapping(
            self.sigma_mapping(self.reduce_mapping(self._kernel_branch_input(input, out_h, out_w)))
        )
        kernel = kernel.view(
            input.shape[0], self.groups, self.kernel_size[0], self.kernel_size[1], out_h, out_w
        )
        return torch.ops.involution.involution2d(
            self.initial_mapping(input),
            kernel,
            [self.stride[0], self.stride[1]],
            [self.padding[0], self.padding[1]],
            [self.dilation[0], self.dilation[1]],
        )
