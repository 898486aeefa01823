"""Test helpers: a slow, obviously correct float64 reference and a replica of the seed module."""

import random
from typing import List, NamedTuple, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from involution.reference import output_size as output_extent  # the conv formula

# Every kernel test runs on each device; CUDA is skipped where there is no GPU.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")),
]


def involution2d_reference(x, w, stride, padding, dilation):
    """Sums, tap by tap, the kernel times a strided slice of the zero-padded input (float64)."""
    x, w = x.double(), w.double()
    _, c, _, _ = x.shape
    _, g, kh, kw, oh, ow = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    w_per_channel = w.repeat_interleave(c // g, dim=1)  # (B, C, KH, KW, OH, OW)
    out = x.new_zeros(x.shape[0], c, oh, ow)
    for u in range(kh):
        for v in range(kw):
            rows = slice(u * dh, u * dh + sh * (oh - 1) + 1, sh)
            cols = slice(v * dw, v * dw + sw * (ow - 1) + 1, sw)
            out = out + w_per_channel[:, :, u, v] * xp[:, :, rows, cols]
    return out


class Case(NamedTuple):
    batch: int
    channels: int
    groups: int
    size: Tuple[int, int]
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    @property
    def out(self):
        return tuple(
            output_extent(self.size[i], self.kernel[i], self.stride[i], self.padding[i],
                          self.dilation[i])
            for i in range(2)
        )

    def tensors(self, dtype=torch.float64, requires_grad=False, generator=None, device="cpu"):
        x = torch.randn(self.batch, self.channels, *self.size, dtype=dtype, generator=generator)
        w = torch.randn(self.batch, self.groups, *self.kernel, *self.out, dtype=dtype,
                        generator=generator)
        x, w = x.to(device), w.to(device)
        return x.requires_grad_(requires_grad), w.requires_grad_(requires_grad)

    def params(self):
        return list(self.stride), list(self.padding), list(self.dilation)


def random_cases(n: int, seed: int, max_size: int = 13) -> List[Case]:
    """Random geometries: odd sizes, strides 1-3, dilation 1-2, padding 0..K, non-square
    kernels, 1-4 groups."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        groups = rng.randint(1, 4)
        kernel = (rng.randint(1, 5), rng.randint(1, 5))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        case = Case(
            batch=rng.randint(1, 3),
            channels=groups * rng.randint(1, 3),
            groups=groups,
            size=(rng.randint(3, max_size), rng.randint(3, max_size)),
            kernel=kernel,
            stride=(rng.randint(1, 3), rng.randint(1, 3)),
            padding=(rng.randint(0, kernel[0]), rng.randint(0, kernel[1])),
            dilation=dilation,
        )
        if min(case.out) >= 1:
            cases.append(case)
    return cases


class SeedInvolution2d(nn.Module):
    """Behavioural replica of the seed module users migrate from (unfold formulation), with its
    submodule names and its defects: the kernel branch is AvgPool2d(stride, stride) of the raw
    input, or an adaptive pool to the output size followed by that AvgPool when
    force_shape_match is set."""

    def __init__(self, in_channels, out_channels, sigma_mapping=None, kernel_size=(7, 7),
                 stride=(1, 1), groups=1, reduce_ratio=1, dilation=(1, 1), padding=(3, 3),
                 bias=False, force_shape_match=False, **kwargs):
        super().__init__()
        pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.dilation, self.padding = pair(dilation), pair(padding)
        self.groups, self.out_channels = groups, out_channels
        self.force_shape_match = force_shape_match
        reduced = out_channels // reduce_ratio
        self.sigma_mapping = sigma_mapping or nn.Sequential(
            nn.BatchNorm2d(reduced, momentum=0.3), nn.ReLU())
        self.initial_mapping = (nn.Conv2d(in_channels, out_channels, 1, bias=bias)
                                if in_channels != out_channels else nn.Identity())
        self.o_mapping = nn.AvgPool2d(self.stride, self.stride)
        self.reduce_mapping = nn.Conv2d(in_channels, reduced, 1, bias=bias)
        self.span_mapping = nn.Conv2d(reduced, self.kernel_size[0] * self.kernel_size[1] * groups,
                                      1, bias=bias)
        self.unfold = nn.Unfold(self.kernel_size, self.dilation, self.padding, self.stride)

    def forward(self, input):
        b, _, h, w = input.shape
        oh = output_extent(h, self.kernel_size[0], self.stride[0], self.padding[0],
                           self.dilation[0])
        ow = output_extent(w, self.kernel_size[1], self.stride[1], self.padding[1],
                           self.dilation[1])
        k = self.kernel_size[0] * self.kernel_size[1]
        cols = self.unfold(self.initial_mapping(input)).view(
            b, self.groups, self.out_channels // self.groups, k, oh, ow)
        if self.force_shape_match:
            input = F.adaptive_avg_pool2d(input, (oh, ow))
        kernel = self.span_mapping(self.sigma_mapping(self.reduce_mapping(self.o_mapping(input))))
        kernel = kernel.view(b, self.groups, k, kernel.shape[-2], kernel.shape[-1]).unsqueeze(2)
        out = (kernel * cols).sum(dim=3)
        return out.view(b, -1, out.shape[-2], out.shape[-1])


def involution3d_reference(x, w, stride, padding, dilation):
    """The 3-D tap loop: kernel times a strided slice of the zero-padded input (float64)."""
    x, w = x.double(), w.double()
    c = x.shape[1]
    g, kernel, out = w.shape[1], w.shape[2:5], w.shape[5:]
    xp = F.pad(x, (padding[2], padding[2], padding[1], padding[1], padding[0], padding[0]))
    w_per_channel = w.repeat_interleave(c // g, dim=1)  # (B, C, KD, KH, KW, OD, OH, OW)
    y = x.new_zeros(x.shape[0], c, *out)
    for t in range(kernel[0]):
        for u in range(kernel[1]):
            for v in range(kernel[2]):
                index = tuple(
                    slice(k * dilation[a], k * dilation[a] + stride[a] * (out[a] - 1) + 1,
                          stride[a])
                    for a, k in enumerate((t, u, v))
                )
                y = y + w_per_channel[:, :, t, u, v] * xp[(slice(None), slice(None)) + index]
    return y


class Case3d(NamedTuple):
    batch: int
    channels: int
    groups: int
    size: Tuple[int, int, int]
    kernel: Tuple[int, int, int]
    stride: Tuple[int, int, int]
    padding: Tuple[int, int, int]
    dilation: Tuple[int, int, int]

    @property
    def out(self):
        return tuple(
            output_extent(self.size[i], self.kernel[i], self.stride[i], self.padding[i],
                          self.dilation[i])
            for i in range(3)
        )

    tensors = Case.tensors
    params = Case.params


def random_cases_3d(n: int, seed: int, max_size: int = 7) -> List[Case3d]:
    """Random 3-D geometries: odd sizes, strides 1-2, dilation 1-2, padding 0..K, non-cubic
    kernels, 1-3 groups."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        groups = rng.randint(1, 3)
        kernel = tuple(rng.randint(1, 3) for _ in range(3))
        case = Case3d(
            batch=rng.randint(1, 2),
            channels=groups * rng.randint(1, 2),
            groups=groups,
            size=tuple(rng.randint(2, max_size) for _ in range(3)),
            kernel=kernel,
            stride=tuple(rng.randint(1, 2) for _ in range(3)),
            padding=tuple(rng.randint(0, k) for k in kernel),
            dilation=tuple(rng.randint(1, 2) for _ in range(3)),
        )
        if min(case.out) >= 1:
            cases.append(case)
    return cases
