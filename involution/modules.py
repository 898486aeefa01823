"""nn.Module wrappers: the kernel-generation branch around the involution op."""

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import _expand

IntOrPair = Union[int, Sequence[int]]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _tuple_at_least(value: IntOrPair, n: int, name: str, minimum: int) -> Tuple[int, ...]:
    values = _expand(value, n, name)
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    return values


class _InvolutionNd(nn.Module):
    """The kernel-generation branch around the involution op, for 2 or 3 spatial axes."""

    _spatial_dims = 2  # set by each subclass
    __constants__ = ["_dims"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        sigma_mapping: Optional[nn.Module],
        kernel_size: IntOrPair,
        stride: IntOrPair,
        groups: int,
        reduce_ratio: int,
        dilation: IntOrPair,
        padding: IntOrPair,
        bias: bool,
        force_shape_match: bool,
        kwargs,
    ) -> None:
        super().__init__()
        name, n = type(self).__name__, self._spatial_dims
        self._dims: int = n
        if kwargs:
            warnings.warn(
                f"{name} ignores the unexpected keyword argument(s) "
                f"{', '.join(sorted(kwargs))}; is one of them misspelt?",
                UserWarning,
                stacklevel=3,
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
        self.kernel_size = _tuple_at_least(kernel_size, n, "kernel_size", 1)
        self.stride = _tuple_at_least(stride, n, "stride", 1)
        self.dilation = _tuple_at_least(dilation, n, "dilation", 1)
        self.padding = _tuple_at_least(padding, n, "padding", 0)
        self.bias = bias
        self.force_shape_match = force_shape_match
        # Lists for forward(): TorchScript cannot index a tuple with a loop variable.
        self._kernel: List[int] = list(self.kernel_size)
        self._stride: List[int] = list(self.stride)
        self._padding: List[int] = list(self.padding)
        self._dilation: List[int] = list(self.dilation)

        conv = nn.Conv2d if n == 2 else nn.Conv3d
        reduced = out_channels // reduce_ratio
        taps = 1
        for k in self.kernel_size:
            taps *= k
        self.sigma_mapping = (
            sigma_mapping
            if sigma_mapping is not None
            else nn.Sequential(
                (nn.BatchNorm2d if n == 2 else nn.BatchNorm3d)(reduced, momentum=0.3), nn.ReLU()
            )
        )
        self.initial_mapping = (
            conv(in_channels, out_channels, kernel_size=1, bias=bias)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.o_mapping = (nn.AvgPool2d if n == 2 else nn.AvgPool3d)(
            kernel_size=self.stride, stride=self.stride
        )
        self.reduce_mapping = conv(in_channels, reduced, kernel_size=1, bias=bias)
        self.span_mapping = conv(reduced, taps * groups, kernel_size=1, bias=bias)

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
    def _output_size(self, input: torch.Tensor) -> List[int]:
        out: List[int] = []
        for i in range(self._dims):
            k, p, d, s = self._kernel[i], self._padding[i], self._dilation[i], self._stride[i]
            out.append((input.shape[2 + i] + 2 * p - d * (k - 1) - 1) // s + 1)
        return out

    def _kernel_branch_input(self, input: torch.Tensor, out: List[int]) -> torch.Tensor:
        if not self.force_shape_match:
            floor_fits = True
            ceil_fits = True
            for i in range(self._dims):
                size, s = input.shape[2 + i], self._stride[i]
                floor_fits = floor_fits and size // s == out[i]
                ceil_fits = ceil_fits and (size + s - 1) // s == out[i]
            if floor_fits:
                return self.o_mapping(input)
            if ceil_fits:
                # The last window overhangs and averages what it covers. count_include_pad=False
                # gives the same numbers as the default here (no explicit padding) and avoids
                # inductor's wrong backward for the default (pytorch/pytorch#198119).
                if self._dims == 2:
                    return F.avg_pool2d(input, self._stride, self._stride, ceil_mode=True,
                                        count_include_pad=False)
                return F.avg_pool3d(input, self._stride, self._stride, ceil_mode=True,
                                    count_include_pad=False)
        if self._dims == 2:
            return F.adaptive_avg_pool2d(input, out)
        return F.adaptive_avg_pool3d(input, out)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        name = "Involution2d" if self._dims == 2 else "Involution3d"
        layout = "(B, C, H, W)" if self._dims == 2 else "(B, C, D, H, W)"
        if input.dim() != self._dims + 2:
            raise ValueError(
                name + ": expected a " + str(self._dims + 2) + "-D input " + layout
                + ", but got a " + str(input.dim()) + "-D tensor"
            )
        out = self._output_size(input)
        for o in out:
            if o < 1:
                raise ValueError(
                    name + ": the dilated kernel is larger than the padded input (input size "
                    + str(list(input.shape[2:])) + "): output size would be < 1"
                )
        kernel = self.span_mapping(
            self.sigma_mapping(self.reduce_mapping(self._kernel_branch_input(input, out)))
        )
        kernel = kernel.view([input.shape[0], self.groups] + self._kernel + out)
        features = self.initial_mapping(input)
        if self._dims == 2:
            return torch.ops.involution.involution2d(
                features, kernel, self._stride, self._padding, self._dilation
            )
        return torch.ops.involution.involution3d(
            features, kernel, self._stride, self._padding, self._dilation
        )


class Involution2d(_InvolutionNd):
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
        super().__init__(
            in_channels, out_channels, sigma_mapping, kernel_size, stride, groups, reduce_ratio,
            dilation, padding, bias, force_shape_match, kwargs,
        )


class Involution3d(_InvolutionNd):
    """3-D involution layer, a corrected drop-in for the seed repository's ``Involution3d``.

    The constructor (3-tuples, the seed's defaults) and the submodule names are the seed's, so
    its state_dicts load. The seed's 3D module is wrong: it reshapes the unfolded input without
    a permute (mixing taps and positions), ignores dilation and pads the axes in reversed order.
    This one computes

        kernel = span_mapping(sigma_mapping(reduce_mapping(pool(input))))  # (B, G*KD*KH*KW, O...)
        output = involution3d(initial_mapping(input), kernel.view(B, G, KD, KH, KW, OD, OH, OW), ...)

    with the same pooling rules as :class:`Involution2d` (``o_mapping`` =
    ``AvgPool3d(stride, stride)`` when it gives the output size, ceil-mode or adaptive pooling
    otherwise, adaptive always with ``force_shape_match=True``).

    Args:
        in_channels, out_channels: channels in and out; ``out_channels % groups == 0``.
        sigma_mapping: default ``Sequential(BatchNorm3d(out_channels // reduce_ratio,
            momentum=0.3), ReLU())``.
        kernel_size, stride, groups, dilation, padding: as in conv3d (int or 3-tuple); defaults
            7x7x7, stride 1, padding 3 (the seed's).
        reduce_ratio, bias, force_shape_match, **kwargs: as in :class:`Involution2d`.
    """

    _spatial_dims = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        sigma_mapping: Optional[nn.Module] = None,
        kernel_size: IntOrPair = (7, 7, 7),
        stride: IntOrPair = (1, 1, 1),
        groups: int = 1,
        reduce_ratio: int = 1,
        dilation: IntOrPair = (1, 1, 1),
        padding: IntOrPair = (3, 3, 3),
        bias: bool = False,
        force_shape_match: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, out_channels, sigma_mapping, kernel_size, stride, groups, reduce_ratio,
            dilation, padding, bias, force_shape_match, kwargs,
        )
