"""RedNet (Li et al., CVPR 2021): ResNet bottlenecks whose 3x3 conv is an involution block.

The architecture is the official mmcls one (``cls/mmcls/models/backbones/rednet.py`` of
d-li14/involution); the submodule names are ours. Official checkpoints load through
:func:`involution.models.convert_official_state_dict`.
"""

from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import _pad_to_windows, _rescale_overhang

__all__ = [
    "RedNet",
    "RedNetBottleneck",
    "RedNetInvolution",
    "rednet26",
    "rednet38",
    "rednet50",
    "rednet101",
    "rednet152",
]

# Blocks per stage, as in mmcls RedNet.arch_settings.
STAGE_BLOCKS = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class RedNetInvolution(nn.Module):
    """The paper's involution block, as used in RedNet (``involution`` in the official code).

    The kernel of each output pixel is generated from the input pixel itself (average-pooled by
    ``stride`` first when ``stride > 1``)::

        kernel = span(relu(bn(reduce(pool(x)))))           # (B, G*K*K, OH, OW)
        out    = involution2d(x, kernel.view(B, G, K, K, OH, OW), stride, (K-1)//2)

    with ``reduce`` a 1x1 conv C -> C/4 without bias, ``span`` a 1x1 conv C/4 -> K*K*G with bias
    and G = C/16 groups (16 channels share a kernel). The aggregated input is ``x`` itself.

    ``pool`` is ``avg_pool2d(stride, stride, ceil_mode=True)`` (computed as zero-padding to whole
    windows, ``avg_pool2d`` and a rescale of the last window, so that one graph serves every
    input size under ``torch.compile(dynamic=True)`` and ``torch.export``): identical to the
    official ``AvgPool2d(stride, stride)`` when the size is divisible by the stride, and still
    the op's output size ``ceil(H / stride)`` when it is not (the official block crashes there).

    With ``fused=True`` (the default) the last two lines run as one op,
    ``fused_involution2d(x, relu(bn(reduce(pool(x)))), span.weight, span.bias, ...)``, which
    computes each pixel's kernel where it is used: the (B, G*K*K, OH, OW) kernel tensor, about
    3 times the block's input, is neither allocated nor saved for backward. ``fused=False``
    runs the span conv and the involution op separately; the parameters, the state_dict and the
    results (to rounding) are the same. If ``span`` is replaced by anything other than a plain
    1x1 ``nn.Conv2d``, the block runs unfused.
    """

    __constants__ = ["fused"]

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1,
                 group_channels: int = 16, reduction_ratio: int = 4, fused: bool = True) -> None:
        super().__init__()
        self.fused = bool(fused)
        if channels % group_channels != 0:
            raise ValueError(f"channels ({channels}) must be a multiple of {group_channels}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = channels // group_channels
        reduced = channels // reduction_ratio
        self.reduce = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(reduced)
        self.relu = nn.ReLU(inplace=True)
        self.span = nn.Conv2d(reduced, kernel_size * kernel_size * self.groups, kernel_size=1)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}" + ("" if self.fused else ", fused=False"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        pooled = x
        if s > 1:
            # Ceil-mode average pooling, without branching on the size (dynamic shapes): pad to
            # whole windows, average, rescale the overhanging last window.
            out = [(x.shape[2] + s - 1) // s, (x.shape[3] + s - 1) // s]
            pooled = _rescale_overhang(
                F.avg_pool2d(_pad_to_windows(x, [s, s], out), [s, s], [s, s]), x, [s, s], out)
        reduced = self.relu(self.bn(self.reduce(pooled)))
        k = self.kernel_size
        p = (k - 1) // 2
        if self.fused:
            span = self.span
            if isinstance(span, nn.Conv2d):
                if (span.kernel_size == (1, 1) and span.stride == (1, 1) and span.padding == (0, 0)
                        and span.dilation == (1, 1) and span.groups == 1):
                    return torch.ops.involution.fused_involution2d(
                        x, reduced, span.weight, span.bias, [k, k], [s, s], [p, p], [1, 1])
        kernel = self.span(reduced)
        b, _, h, w = kernel.shape
        kernel = kernel.view(b, self.groups, k, k, h, w)  # g-major, then kh, kw
        return torch.ops.involution.involution2d(x, kernel, [s, s], [p, p], [1, 1])


class RedNetBottleneck(nn.Module):
    """ResNet bottleneck, "pytorch" style, with :class:`RedNetInvolution` (K=7) as the middle
    layer: conv1 (1x1) - bn1 - relu - involution (stride) - bn2 - relu - conv3 (1x1) - bn3,
    plus the shortcut (``downsample``: 1x1 conv with stride + BN, or identity), then relu."""

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 fused: bool = True) -> None:
        super().__init__()
        mid = out_channels // self.expansion
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.involution = RedNetInvolution(mid, kernel_size=7, stride=stride, fused=fused)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.involution(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class RedNet(nn.Module):
    """RedNet classifier: stem, four stages of :class:`RedNetBottleneck`, global average pool,
    linear head.

    Stem: 3x3 conv s2 3->32 + BN + ReLU; involution (32 channels, K=3, 2 groups) + BN + ReLU;
    3x3 conv 32->64 + BN + ReLU; then 3x3 max pool s2 p1. Stage widths 256/512/1024/2048
    (64/128/256/512 inside the bottleneck), first-block strides 1/2/2/2.

    Any input size works, odd ones included (the official implementation fails on sizes that
    are odd at a stride-2 involution, e.g. 97x97).

    Args:
        stage_blocks: blocks per stage, e.g. ``(1, 2, 4, 1)`` for RedNet-26.
        num_classes: outputs of the linear head.
        zero_init_residual: initialise the last BN of every bottleneck to zero, so each
            residual block starts as the identity (default True, as the official RedNet
            backbone). Without it a freshly built network's activations grow through the
            involutions (each multiplies the features by a kernel computed from them, so
            magnitudes square), and RedNet-50 in eval mode overflows to NaN logits.
        fused: run every involution block as the fused op (default True; see
            :class:`RedNetInvolution`). ``False`` stores each generated kernel, as the official
            code does; the parameters and results are the same.

    Initialisation (as mmcls): convolutions Kaiming-normal (fan_out, ReLU gain), conv biases
    zero, BN weight 1 and bias 0, the head normal(0, 0.01) with zero bias.

    Submodules: ``stem``, ``maxpool``, ``layer1``..``layer4``, ``avgpool``, ``fc``. Official
    checkpoints load with::

        model.load_state_dict(convert_official_state_dict(torch.load(path)))
    """

    def __init__(self, stage_blocks: Sequence[int], num_classes: int = 1000,
                 zero_init_residual: bool = True, fused: bool = True) -> None:
        super().__init__()
        stage_blocks = tuple(stage_blocks)
        if len(stage_blocks) != 4 or not all(isinstance(n, int) and n >= 1
                                             for n in stage_blocks):
            raise ValueError(f"stage_blocks must be 4 positive ints, got {stage_blocks!r}")
        self.stage_blocks = stage_blocks
        self.num_classes = num_classes
        self.stem = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 32, kernel_size=3, stride=2, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(32)),
            ("relu1", nn.ReLU(inplace=True)),
            ("involution", RedNetInvolution(32, kernel_size=3, stride=1, fused=fused)),
            ("bn2", nn.BatchNorm2d(32)),
            ("relu2", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1, bias=False)),
            ("bn3", nn.BatchNorm2d(64)),
            ("relu3", nn.ReLU(inplace=True)),
        ]))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for i, (blocks, stride) in enumerate(zip(stage_blocks, (1, 2, 2, 2))):
            out_channels = 256 * 2 ** i
            layer = [RedNetBottleneck(in_channels, out_channels, stride, fused)]
            layer += [RedNetBottleneck(out_channels, out_channels, fused=fused)
                      for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_channels = out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, RedNetBottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, (B, 2048, ~H/32, ~W/32)."""
        x = self.maxpool(self.stem(x))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def _rednet(depth: int, num_classes: int, **kwargs: Any) -> RedNet:
    return RedNet(STAGE_BLOCKS[depth], num_classes=num_classes, **kwargs)


_LOADING = """

    Load an official (mmcls) ImageNet checkpoint with::

        model = {name}()
        ckpt = torch.load("{name}.pth", map_location="cpu")
        model.load_state_dict(convert_official_state_dict(ckpt))
"""


def rednet26(num_classes: int = 1000, **kwargs: Any) -> RedNet:
    """RedNet-26: stages (1, 2, 4, 1); 9,233,166 parameters with 1000 classes (paper: 9.23M,
    ImageNet top-1 75.96). ``kwargs`` go to :class:`RedNet` (``zero_init_residual``, ``fused``)."""
    return _rednet(26, num_classes, **kwargs)


def rednet38(num_classes: int = 1000, **kwargs: Any) -> RedNet:
    """RedNet-38: stages (2, 3, 5, 2); 12,386,986 parameters with 1000 classes (paper: 12.39M,
    top-1 77.48). ``kwargs`` go to :class:`RedNet`."""
    return _rednet(38, num_classes, **kwargs)


def rednet50(num_classes: int = 1000, **kwargs: Any) -> RedNet:
    """RedNet-50: stages (3, 4, 6, 3); 15,540,806 parameters with 1000 classes (paper: 15.54M,
    top-1 78.35). ``kwargs`` go to :class:`RedNet`."""
    return _rednet(50, num_classes, **kwargs)


def rednet101(num_classes: int = 1000, **kwargs: Any) -> RedNet:
    """RedNet-101: stages (3, 4, 23, 3); 25,652,950 parameters with 1000 classes (paper:
    25.65M, top-1 78.92). ``kwargs`` go to :class:`RedNet`."""
    return _rednet(101, num_classes, **kwargs)


def rednet152(num_classes: int = 1000, **kwargs: Any) -> RedNet:
    """RedNet-152: stages (3, 8, 36, 3); 33,984,582 parameters with 1000 classes, the same as
    the official code (the paper prints 33.99M; the count rounds to 33.98M), top-1 79.12.
    ``kwargs`` go to :class:`RedNet`."""
    return _rednet(152, num_classes, **kwargs)


for _f in (rednet26, rednet38, rednet50, rednet101, rednet152):
    if _f.__doc__:  # None under python -OO
        _f.__doc__ += _LOADING.format(name=_f.__name__)
del _f
