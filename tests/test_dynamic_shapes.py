"""Stride-2 modules are shape-dynamic: the kernel branch's pooling does not branch on the input
size, so torch.export with dynamic height and width works, and torch.compile(dynamic=True)
serves odd and even sizes with one graph. The same pooling works for inputs shorter than the
stride (Involution3d's ceil-mode avg_pool3d failed there). Layers without "same" padding, whose
pooling eager mode chooses by the size (floor mode, ceil mode or adaptive), pool in traced
graphs by a formula that makes the choice with tensors: shape-dynamic too, and equal to eager.
"""

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

import involution
from involution.models import RedNet
from involution.modules import _window_pool

ops = torch.ops.involution


def involution2d_s2():
    torch.manual_seed(0)
    return involution.Involution2d(8, 16, kernel_size=3, padding=1, stride=2, groups=4,
                                   reduce_ratio=2).eval()


def involution3d_s2():
    torch.manual_seed(0)
    return involution.Involution3d(4, 8, kernel_size=3, padding=1, stride=2, groups=2,
                                   reduce_ratio=2).eval()


def involution2d_valid_s2():
    """No padding at stride 2: floor-mode pooling at odd heights, adaptive at even ones."""
    torch.manual_seed(0)
    return involution.Involution2d(8, 16, kernel_size=(3, 2), padding=0, stride=2, groups=4,
                                   reduce_ratio=2).eval()


def involution3d_valid():
    """No padding at stride (2, 1, 1): the kernel branch pools adaptively on every axis."""
    torch.manual_seed(0)
    return involution.Involution3d(4, 8, kernel_size=3, padding=0, stride=(2, 1, 1), groups=2,
                                   reduce_ratio=2).eval()


def tiny_rednet():
    torch.manual_seed(0)
    return RedNet((1, 1, 1, 1), num_classes=10).eval()


def eager_ceil_pool_kernel_input(layer, x):
    """What the kernel branch pools to: ceil-mode average pooling (the previous formulation)."""
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    return pool(x, layer.stride, layer.stride, ceil_mode=True, count_include_pad=False)


@pytest.mark.parametrize("dims", [2, 3])
def test_kernel_branch_pooling_equals_floor_or_ceil_mode(dims):
    layer = involution2d_s2() if dims == 2 else involution3d_s2()
    for size in [(8, 8), (9, 9), (9, 10), (3, 2), (1, 5)] if dims == 2 else [
            (4, 6, 6), (5, 6, 7), (1, 3, 4), (3, 3, 3)]:
        x = torch.randn(2, layer.in_channels, *size, dtype=torch.float64)
        out = layer._output_size(x)
        got = layer._kernel_branch_input(x, out)
        if all(n >= 2 for n in size):
            torch.testing.assert_close(got, eager_ceil_pool_kernel_input(layer, x))
        if all(n % 2 == 0 for n in size):
            assert torch.equal(got, layer.o_mapping(x))  # bit for bit the seed's o_mapping


def _export_dynamic(model, x, dims, low, high):
    """Exports with the batch and every spatial size dynamic."""
    shapes = {0: torch.export.Dim("batch", min=1, max=16)}
    shapes.update({2 + a: torch.export.Dim(f"s{a}", min=low, max=high) for a in range(dims)})
    return torch.export.export(model, (x,), dynamic_shapes=(shapes,))


@pytest.mark.parametrize("make,shape,others,low,high", [
    (involution2d_s2, (2, 8, 12, 13), [(1, 8, 9, 9), (3, 8, 16, 10), (1, 8, 7, 20)], 4, 64),
    (involution3d_s2, (2, 4, 6, 7, 8), [(3, 4, 5, 5, 5), (1, 4, 8, 9, 6)], 4, 64),
    (tiny_rednet, (2, 3, 64, 65), [(3, 3, 97, 80), (1, 3, 64, 64)], 40, 224),  # layer4 > 1x1
    # From 5 on, so that every output size is at least 2 (PyTorch specializes sizes of 1).
    (involution2d_valid_s2, (2, 8, 12, 13), [(1, 8, 9, 9), (3, 8, 16, 10), (1, 8, 7, 20)], 5, 64),
    (involution3d_valid, (2, 4, 6, 7, 8), [(3, 4, 5, 5, 5), (1, 4, 8, 9, 6)], 5, 64),
], ids=["Involution2d", "Involution3d", "RedNet", "Involution2d-no-padding",
        "Involution3d-no-padding"])
def test_export_with_dynamic_height_and_width(make, shape, others, low, high):
    model = make()
    dims = len(shape) - 2
    x = torch.randn(shape)
    exported = _export_dynamic(model, x, dims, low, high)
    for size in [shape] + others:
        xi = torch.randn(size)
        torch.testing.assert_close(exported.module()(xi), model(xi), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make,channels,sizes", [
    (involution2d_s2, 8, [(9, 10), (12, 11), (16, 17), (13, 13), (10, 20)]),
    (involution3d_s2, 4, [(5, 6, 7), (6, 6, 8), (7, 9, 5)]),
    (involution2d_valid_s2, 8, [(9, 10), (12, 11), (16, 17), (13, 13), (10, 20)]),
    (involution3d_valid, 4, [(5, 6, 7), (6, 6, 8), (7, 9, 5)]),
], ids=["Involution2d", "Involution3d", "Involution2d-no-padding", "Involution3d-no-padding"])
def test_compile_dynamic_one_graph_for_odd_and_even_sizes(make, channels, sizes):
    torch._dynamo.reset()
    model = make().train()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for size in sizes:
        x = torch.randn(2, channels, *size, requires_grad=True)
        y = compiled(x)
        y.sum().backward()
        frames.append(counter.frame_count)
    assert frames == frames[:1] * len(sizes), f"recompiled: frame counts {frames}"


# Layers without "same" padding: (kernel, stride, padding, dilation), 2-D or 3-D.
VALID_LAYERS = [
    ((3, 3), (2, 2), (0, 0), (1, 1)),     # floor mode at odd sizes, adaptive at even ones
    ((3, 2), (2, 2), (0, 0), (1, 1)),     # floor mode at odd heights (any width)
    ((4, 4), (1, 1), (1, 1), (1, 1)),     # even kernel: always adaptive
    ((3, 5), (3, 2), (0, 1), (1, 1)),     # floor or ceil mode by the sizes, else adaptive
    ((3, 3, 3), (2, 1, 1), (0, 1, 0), (1, 1, 2)),
    ((2, 3, 3), (2, 2, 3), (0, 0, 0), (1, 1, 1)),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation", VALID_LAYERS)
def test_traced_kernel_branch_pooling_equals_eager(kernel, stride, padding, dilation):
    """The pooling traced graphs use (_window_pool, matrix products) against eager mode's
    (o_mapping, ceil-mode or adaptive pooling, chosen by the size), at every size from 1 to 13
    per axis where the output is not empty; with force_shape_match too."""
    dims = len(kernel)
    cls = involution.Involution2d if dims == 2 else involution.Involution3d
    for force in (False, True):
        layer = cls(4, 4, kernel_size=kernel, stride=stride, padding=padding,
                    dilation=dilation, groups=2, force_shape_match=force)
        gen = torch.Generator().manual_seed(0)
        sizes = [(h, w) for h in range(1, 14) for w in range(1, 14)] if dims == 2 else [
            (d, h, w) for d in range(1, 8) for h in (4, 7, 9) for w in (5, 6, 10)]
        checked = 0
        for size in sizes:
            x = torch.randn(2, 4, *size, dtype=torch.float64, generator=gen)
            out = layer._output_size(x)
            if min(out) < 1:
                continue
            traced = _window_pool(x, out, layer._stride, layer._same_size,
                                  layer._always_adaptive or force)
            torch.testing.assert_close(traced, layer._kernel_branch_input(x, out), rtol=1e-12,
                                       atol=1e-12, msg=f"size {size}")
            checked += 1
        assert checked > 20


# --- Modules at inputs shorter than the stride ----------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_module_input_shorter_than_stride(dims):
    torch.manual_seed(0)
    cls = involution.Involution2d if dims == 2 else involution.Involution3d
    layer = cls(4, 4, kernel_size=3, stride=2, padding=1, groups=2).eval().double()
    shape = (1, 4, 1, 4, 4) if dims == 3 else (1, 4, 1, 4)
    x = torch.randn(shape, dtype=torch.float64)
    y = layer(x)
    assert y.shape == ((1, 4, 1, 2, 2) if dims == 3 else (1, 4, 1, 2))
    # The kernel branch averages what each stride window covers: here the single row/plane.
    pool = torch.nn.functional.avg_pool3d if dims == 3 else torch.nn.functional.avg_pool2d
    pooled = pool(x, (1,) + (2,) * (dims - 1), (1,) + (2,) * (dims - 1))
    kernel = layer.span_mapping(layer.sigma_mapping(layer.reduce_mapping(pooled)))
    kernel = kernel.view(1, 2, *([3] * dims), *y.shape[2:])
    op = ops.involution2d if dims == 2 else ops.involution3d
    torch.testing.assert_close(y, op(x, kernel, [2] * dims, [1] * dims, [1] * dims))
