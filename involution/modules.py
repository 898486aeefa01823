"""nn.Module wrappers: the kernel-generation branch around the involution op."""

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import _expand
from .reference import output_size

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


def _pad_to_windows(input: torch.Tensor, stride: List[int], out: List[int]) -> torch.Tensor:
    """Zero-pads the spatial axes of ``input`` at the end to ``out[i] * stride[i]``."""
    pad: List[int] = []
    for i in range(len(stride) - 1, -1, -1):  # F.pad lists the last axis first
        pad += [0, out[i] * stride[i] - input.shape[2 + i]]
    return F.pad(input, pad)


def _rescale_overhang(pooled: torch.Tensor, input: torch.Tensor, stride: List[int],
                      out: List[int]) -> torch.Tensor:
    """Turns an average over whole ``stride`` windows of the zero-padded input into the average
    over what each window covers of ``input``: the last window along an axis is scaled by
    stride / (elements it covers), every other one by exactly 1. Together with
    :func:`_pad_to_windows` this is ceil-mode average pooling (``count_include_pad=False``),
    written without branching on the input size (one graph for every size under
    ``torch.compile(dynamic=True)`` and ``torch.export``), and valid for inputs shorter than
    the stride too."""
    dims = len(stride)
    for i in range(dims):
        s = stride[i]
        if s == 1:
            continue
        starts = torch.arange(out[i], device=input.device) * s
        covered = (input.shape[2 + i] - starts).clamp(max=s)
        # Shaped (out[i], 1, ...) over the axes from i on, broadcast over the leading ones. As
        # a view (B=1, C=1, ..., out[i], ...) it had strides (out[i], out[i], ..., 1), and when
        # training at a second size (symbolic sizes) inductor failed to order them while saving
        # it for backward ("cannot determine truth value of Relational: 1 < out"; its
        # get_stride_order sorts symbolic strides without the shape environment:
        # pytorch/pytorch#185510). The leading size-1 axes were what it could not order.
        shape = [out[i]] + [1] * (dims - 1 - i)
        pooled = pooled * (s / covered).to(pooled.dtype).view(shape)
    return pooled


@torch.jit.unused
def _tracing() -> bool:
    """Whether torch.compile, torch.export or a torch.onnx exporter is tracing the module."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _window_pool(input: torch.Tensor, out: List[int], stride: List[int], keep: List[bool],
                 adaptive: bool) -> torch.Tensor:
    """The kernel-branch pooling of layers without "same" padding, for traced graphs: each
    spatial axis is multiplied by an (out, size) matrix that averages each output's window.

    The windows are the ones eager mode pools over: ``[j * s, min(j * s + s, size))`` (floor
    mode where they tile the input, ceil mode where the last one overhangs) when the output size
    is ``floor(size / s)`` on every axis or ``ceil(size / s)`` on every axis, adaptive windows
    ``[floor(j * size / out), ceil((j + 1) * size / out))`` otherwise, or always with
    ``adaptive``. The choice is a tensor here, not a Python branch on the size, so the graph
    holds for every size: no guard (torch.compile reuses it, torch.export and torch.onnx keep
    height and width dynamic). And it avoids two PyTorch bugs: inductor's lowering of
    ``adaptive_avg_pool2d`` fails for a symbolic output size (pytorch/pytorch#185575), and on
    the CPU inductor's multi-threaded scatter-add, the backward of a gather from prefix sums,
    writes out of bounds (pytorch/pytorch#191837). ``torch.onnx`` exports no
    ``adaptive_avg_pool3d`` and no output size computed from the input's. It costs
    O(size * out) per row and axis instead of O(size), which is why eager mode and TorchScript
    keep the ATen pooling kernels. ``keep[i]``: the output size is the input size on axis i for
    every size, so the axis is left as it is."""
    dims = len(out)
    device = input.device
    j_all: List[torch.Tensor] = []
    floor_all = torch.ones((), dtype=torch.bool, device=device)
    ceil_all = torch.ones((), dtype=torch.bool, device=device)
    for i in range(dims):
        n, s = input.shape[2 + i], stride[i]
        j = torch.arange(out[i], device=device)
        j_all.append(j)
        if not adaptive:
            # floor: out * s <= n < out * s + s; ceil: out * s - s < n <= out * s.
            floor_all = floor_all & (j * s + s <= n).all() & (n - j * s < 2 * s).any()
            ceil_all = ceil_all & (j * s < n).all() & (n - j * s <= s).any()
    use_stride = floor_all | ceil_all
    wide = torch.float32 if input.dtype == torch.float16 or input.dtype == torch.bfloat16 \
        else input.dtype
    # Axis by axis from the last: contract the last axis, divide the window sums by the window
    # lengths, then move the pooled axis to the front of the spatial ones. Every intermediate
    # is contiguous and its last axis the one contracted, which adds no guard on the sizes:
    # a matmul over another axis (broadcast, or of a transposed view) makes PyTorch compare
    # symbolic strides and sizes, guards that torch.export cannot prove for all sizes. The
    # outcome is not a view either (inductor cannot order a saved view's symbolic strides:
    # see _rescale_overhang).
    x = input.to(wide)
    for i in range(dims - 1, -1, -1):
        if not keep[i]:
            n, o, s, j = input.shape[2 + i], out[i], stride[i], j_all[i]
            start = torch.div(j * n, o, rounding_mode="floor")
            end = torch.div((j + 1) * n + o - 1, o, rounding_mode="floor")
            if not adaptive:
                start = torch.where(use_stride, j * s, start)
                end = torch.where(use_stride, (j * s + s).clamp(max=n), end)
            k = torch.arange(n, device=device)
            inside = ((k >= start.unsqueeze(1)) & (k < end.unsqueeze(1))).to(wide)  # (o, n)
            x = torch.matmul(x, inside.t()) / (end - start).to(wide)
        if dims > 1:  # (the last axis by its index: the TorchScript ONNX exporter needs that)
            x = x.movedim(dims + 1, 2).contiguous()
    return x.to(input.dtype)


def _is_pointwise(kernel_size: List[int], stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, padding_mode: str) -> bool:
    """Whether a conv with these settings is a plain 1x1 (or 1x1x1) conv, which the fused op
    can run."""
    plain = groups == 1 and padding_mode == "zeros"
    for i in range(len(kernel_size)):
        plain = plain and kernel_size[i] == 1 and stride[i] == 1 and padding[i] == 0
        plain = plain and dilation[i] == 1
    return plain


class _InvolutionNd(nn.Module):
    """The kernel-generation branch around the involution op, for 2 or 3 spatial axes."""

    _spatial_dims = 2  # set by each subclass
    __constants__ = ["_dims", "_same_padding", "_unit_stride", "fused"]

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
        fused: bool,
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
        if not all(isinstance(v, bool) for v in (bias, force_shape_match, fused)):
            raise TypeError("bias, force_shape_match and fused must be bools")
        # Whether forward() runs the span conv inside the fused op (when span_mapping is a plain
        # 1x1 conv); a plain attribute, so it may be changed after construction.
        self.fused: bool = fused
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
        # Whether the output size is ceil(size / stride) on every axis for every input size
        # (2 * padding == dilation * (kernel - 1)), and whether every stride is 1.
        self._same_padding: bool = all(
            2 * p == d * (k - 1) for k, p, d in zip(self.kernel_size, self.padding, self.dilation)
        )
        self._unit_stride: bool = all(s == 1 for s in self.stride)
        # Per axis, whether the output size is the input size for every input size; and
        # whether on some axis it is neither floor(size / stride) nor ceil(size / stride) for
        # any size, so that the kernel branch always pools adaptively. With r = 2 * padding -
        # dilation * (kernel - 1) - 1 + stride the output size is floor((size + r) / stride):
        # never the floor for r <= -stride, never the ceil for r >= 2 * stride - 1.
        self._same_size: List[bool] = []
        self._always_adaptive: bool = False
        for k, s, p, d in zip(self.kernel_size, self.stride, self.padding, self.dilation):
            self._same_size.append(s == 1 and 2 * p == d * (k - 1))
            r = 2 * p - d * (k - 1) - 1 + s
            self._always_adaptive = self._always_adaptive or r <= -s or r >= 2 * s - 1

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
        if not self.fused:
            s += ", fused=False"
        return s

    # The kernel branch must be built at the op's output size before the op runs, so this mirrors
    # the conv formula of csrc/ops/checks.cpp; the op re-checks the kernel's size against it.
    def _output_size(self, input: torch.Tensor) -> List[int]:
        out: List[int] = []
        for i in range(self._dims):
            if self._same_padding:
                # The same number written as ceil(size / stride): inductor failed to compile
                # Involution3d at stride 2 for symbolic sizes written as (size - 1) // 2 + 1
                # (a ValueRangeError in its value-range analysis of the reduce conv's input
                # strides, the kernel branch at that size); the ceil form compiles.
                out.append((input.shape[2 + i] + self._stride[i] - 1) // self._stride[i])
            else:
                out.append(output_size(input.shape[2 + i], self._kernel[i], self._stride[i],
                                       self._padding[i], self._dilation[i]))
        return out

    def _stride_pool(self, input: torch.Tensor, out: List[int]) -> torch.Tensor:
        # Average pooling with windows of `stride` at multiples of `stride`, `out` windows per
        # axis, each averaging the input it covers: o_mapping (floor mode) where the windows
        # tile the input, ceil mode where the last window overhangs. Written without branching
        # on the input size, so one graph serves every size under torch.compile(dynamic=True)
        # and torch.export: the input is zero-padded at the end to out * stride (the pad is in
        # [0, stride) wherever this is used), o_mapping averages over whole windows, and the
        # overhanging windows are rescaled by stride / (elements they cover) per axis, a factor
        # of exactly 1 elsewhere.
        return _rescale_overhang(self.o_mapping(_pad_to_windows(input, self._stride, out)),
                                 input, self._stride, out)

    def _kernel_branch_input(self, input: torch.Tensor, out: List[int]) -> torch.Tensor:
        if not self.force_shape_match:
            if self._same_padding:
                # "Same" padding: out = ceil(size / stride) on every axis, whatever the size, so
                # the choice does not depend on it (floor and ceil pooling are one formula).
                if self._unit_stride:
                    return self.o_mapping(input)
                return self._stride_pool(input, out)
            if not torch.jit.is_scripting() and _tracing():
                return _window_pool(input, out, self._stride, self._same_size,
                                    self._always_adaptive)
            floor_fits = True
            ceil_fits = True
            for i in range(self._dims):
                size, s = input.shape[2 + i], self._stride[i]
                floor_fits = floor_fits and size // s == out[i]
                ceil_fits = ceil_fits and (size + s - 1) // s == out[i]
            if floor_fits:
                return self.o_mapping(input)
            if ceil_fits:
                return self._stride_pool(input, out)
        if not torch.jit.is_scripting() and _tracing():
            return _window_pool(input, out, self._stride, self._same_size, True)
        if self._dims == 2:
            return F.adaptive_avg_pool2d(input, out)
        return F.adaptive_avg_pool3d(input, out)

    def _fused_forward(self, features: torch.Tensor,
                       reduced: torch.Tensor) -> Optional[torch.Tensor]:
        """The fused op's output, or None where span_mapping is not a plain 1x1 conv. Each
        subclass names its own conv class (TorchScript resolves every name it compiles)."""
        raise NotImplementedError

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
        reduced = self.sigma_mapping(self.reduce_mapping(self._kernel_branch_input(input, out)))
        features = self.initial_mapping(input)
        if self.fused:
            # The span conv inside the op: its kernel is never stored. Only a plain 1x1 conv can
            # be fused; anything else a user put in span_mapping runs as it is, below.
            fused = self._fused_forward(features, reduced)
            if fused is not None:
                return fused
        kernel = self.span_mapping(reduced)
        kernel = kernel.view([input.shape[0], self.groups] + self._kernel + out)
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

    computed by default as one fused op that generates the kernel where it is used
    (``fused=True``; see below).

    ``pool`` brings the kernel branch to the output size (OH, OW) given by the conv formula:

    * ``o_mapping`` (``AvgPool2d(stride, stride)``), as in the seed, when that already gives
      (OH, OW), which is the case for "same" padding and sizes divisible by the stride;
    * average pooling in ceil mode (the last window averages what it covers) when that gives
      (OH, OW): odd sizes with stride > 1 and "same" padding, where the seed crashes, and
      inputs shorter than the stride. With "same" padding (``2 * padding == dilation *
      (kernel_size - 1)``) these two are computed as one formula (zero-pad to OH * stride,
      ``o_mapping``, rescale the last window), so the choice never depends on the input size:
      ``torch.compile(dynamic=True)`` and ``torch.export`` with dynamic height and width work
      at any stride;
    * ``adaptive_avg_pool2d`` to (OH, OW) otherwise (non-"same" padding, even kernels), where
      the seed crashes, and always when ``force_shape_match=True`` (the seed then pooled twice
      when stride > 1).

    Without "same" padding the choice depends on the size; in traced graphs (torch.compile,
    torch.export, ONNX) the same windows are averaged by a matrix product per axis and chosen
    in the graph, so those layers are shape-dynamic too.

    Args:
        in_channels, out_channels: channels in and out; ``out_channels % groups == 0``.
        sigma_mapping: module applied after the reduce conv; default
            ``Sequential(BatchNorm2d(out_channels // reduce_ratio, momentum=0.3), ReLU())``.
        kernel_size, stride, groups, dilation, padding: as in conv2d (int or pair). The
            defaults are the seed's (7x7, stride 1, padding 3).
        reduce_ratio: the reduce conv has ``out_channels // reduce_ratio`` channels.
        bias: bias on every 1x1 conv.
        force_shape_match: always pool the kernel branch adaptively to the output size.
        fused: run ``span_mapping`` inside the op (:func:`involution.functional.fused_involution2d`,
            default True): the kernel, ``G*KH*KW`` channels at the output size, is generated
            where it is used and neither stored nor saved for backward. ``False`` runs the
            span conv and the op separately. Same parameters, state_dict and results (to
            rounding); a ``span_mapping`` that is not a plain 1x1 ``nn.Conv2d`` runs unfused.
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
        fused: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, out_channels, sigma_mapping, kernel_size, stride, groups, reduce_ratio,
            dilation, padding, bias, force_shape_match, fused, kwargs,
        )

    def _fused_forward(self, features: torch.Tensor,
                       reduced: torch.Tensor) -> Optional[torch.Tensor]:
        span = self.span_mapping
        if isinstance(span, nn.Conv2d):
            if _is_pointwise(span.kernel_size, span.stride, span.padding, span.dilation,
                             span.groups, span.padding_mode):
                return torch.ops.involution.fused_involution2d(
                    features, reduced, span.weight, span.bias, self._kernel, self._stride,
                    self._padding, self._dilation)
        return None


class Involution3d(_InvolutionNd):
    """3-D involution layer, a corrected drop-in for the seed repository's ``Involution3d``.

    The constructor (3-tuples, the seed's defaults) and the submodule names are the seed's, so
    its state_dicts load. The seed's 3D module is wrong: it reshapes the unfolded input without
    a permute (mixing taps and positions), ignores dilation and pads the axes in reversed order.
    This one computes

        kernel = span_mapping(sigma_mapping(reduce_mapping(pool(input))))  # (B, G*KD*KH*KW, O...)
        output = involution3d(initial_mapping(input),
                              kernel.view(B, G, KD, KH, KW, OD, OH, OW), ...)

    with the same pooling rules as :class:`Involution2d` (``o_mapping`` =
    ``AvgPool3d(stride, stride)`` when it gives the output size, ceil-mode or adaptive pooling
    otherwise, adaptive always with ``force_shape_match=True``).

    Args:
        in_channels, out_channels: channels in and out; ``out_channels % groups == 0``.
        sigma_mapping: default ``Sequential(BatchNorm3d(out_channels // reduce_ratio,
            momentum=0.3), ReLU())``.
        kernel_size, stride, groups, dilation, padding: as in conv3d (int or 3-tuple); defaults
            7x7x7, stride 1, padding 3 (the seed's).
        reduce_ratio, bias, force_shape_match, fused, **kwargs: as in :class:`Involution2d`.
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
        fused: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, out_channels, sigma_mapping, kernel_size, stride, groups, reduce_ratio,
            dilation, padding, bias, force_shape_match, fused, kwargs,
        )

    def _fused_forward(self, features: torch.Tensor,
                       reduced: torch.Tensor) -> Optional[torch.Tensor]:
        span = self.span_mapping
        if isinstance(span, nn.Conv3d):
            if _is_pointwise(span.kernel_size, span.stride, span.padding, span.dilation,
                             span.groups, span.padding_mode):
                return torch.ops.involution.fused_involution3d(
                    features, reduced, span.weight, span.bias, self._kernel, self._stride,
                    self._padding, self._dilation)
        return None
