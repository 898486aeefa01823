"""CUDA kernels: equal to the CPU kernels, deterministic, autocast, streams and devices.

The reference, gradcheck, dtype and layout tests of test_ops.py and test_ops3d.py also run on
CUDA (their `device` parameter). Everything here needs a GPU and is skipped without one; the
kernels' index arithmetic is also checked on the host by tests/cpp/emulate_cuda_kernels.cpp.
"""

import pytest
import torch
from helpers import Case, Case3d, random_cases, random_cases_3d

import involution

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
ops = torch.ops.involution

CASES_2D = random_cases(12, seed=7, max_size=24)
CASES_3D = random_cases_3d(6, seed=8)
# The paper's layer: 16 channels per group (one register block), K=7, stride 1 and 2.
REDNET = [Case(2, 64, 4, (28, 28), (7, 7), (1, 1), (3, 3), (1, 1)),
          Case(2, 64, 4, (29, 27), (7, 7), (2, 2), (3, 3), (1, 1)),
          Case(1, 96, 2, (13, 13), (3, 3), (1, 1), (1, 1), (1, 1)),  # 48 channels per group
          # The other tiled specialisations: K = 3 at stride 2, input pairs (even width, odd
          # padding) or not, partial column blocks, channels left after the register blocks.
          Case(2, 40, 2, (15, 16), (3, 3), (2, 2), (1, 1), (1, 1)),
          Case(1, 36, 3, (14, 14), (7, 7), (1, 1), (2, 2), (1, 1)),
          Case(2, 32, 2, (7, 7), (7, 7), (2, 2), (3, 3), (1, 1))]


def run(fn, case, x, w):
    y = fn(x, w, *case.params())
    gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y) * 0.5)
    return y, gx, gw


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                       (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
                         ids=str)
def test_cuda_equals_cpu(dtype, tol):
    for fn, cases in ((ops.involution2d, CASES_2D + REDNET), (ops.involution3d, CASES_3D)):
        for case in cases:
            x, w = case.tensors(dtype=dtype, requires_grad=True)
            xc = x.detach().cuda().requires_grad_()
            wc = w.detach().cuda().requires_grad_()
            for a, b in zip(run(fn, case, x, w), run(fn, case, xc, wc)):
                # Both accumulate in float32 (float64 for float64), in different orders.
                taps = w.shape[2:2 + len(case.size)].numel()
                scale = (case.channels // case.groups * taps) ** 0.5
                torch.testing.assert_close(b.cpu().double(), a.double(), atol=tol * scale,
                                           rtol=tol)


def test_deterministic_algorithms_hold_and_results_repeat():
    case = REDNET[1]
    x, w = case.tensors(dtype=torch.float32, requires_grad=True, device="cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = run(ops.involution2d, case, x, w)
        for _ in range(3):
            for a, b in zip(first, run(ops.involution2d, case, x, w)):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_runs_in_the_region_dtype(dtype):
    case = REDNET[0]
    x, w = case.tensors(dtype=torch.float32, requires_grad=True, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = ops.involution2d(x, w, *case.params())
        y3 = involution.functional.involution3d(x.unsqueeze(2), w.unsqueeze(2).unsqueeze(5), 1,
                                                (0, 3, 3))
    assert y.dtype == dtype and y3.dtype == dtype
    expected = ops.involution2d(x.detach().to(dtype), w.detach().to(dtype), *case.params())
    assert torch.equal(y, expected)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    x64, w64 = case.tensors(device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        assert ops.involution2d(x64, w64, *case.params()).dtype == torch.float64


def test_runs_on_the_current_stream_and_the_tensors_device():
    case = REDNET[0]
    x, w = case.tensors(dtype=torch.float32, device="cuda")
    expected = ops.involution2d(x, w, *case.params())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = ops.involution2d(x, w, *case.params())
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(y, expected)
    if torch.cuda.device_count() > 1:
        x1, w1 = x.to("cuda:1"), w.to("cuda:1")
        y1 = ops.involution2d(x1, w1, *case.params())  # current device stays cuda:0
        assert y1.device == x1.device and torch.equal(y1.cpu(), expected.cpu())


def test_mixed_devices_are_rejected():
    # The CUDA kernel is picked for a CPU operand too: its checks run before any device guard.
    case = REDNET[2]
    x, w = case.tensors(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="to be on the same device, but got input on cpu"):
        ops.involution2d(x, w.cuda(), *case.params())
    with pytest.raises(RuntimeError, match="to be on the same device, but got input on cuda"):
        ops.involution2d(x.cuda(), w, *case.params())
    gy = torch.randn(x.shape[0], x.shape[1], *w.shape[-2:])
    stride, padding, dilation = case.params()
    with pytest.raises(RuntimeError, match="same device"):
        ops._involution2d_backward_input(gy, w.cuda(), list(case.size), stride, padding, dilation)
    with pytest.raises(RuntimeError, match="same device"):
        ops._involution2d_backward_weight(gy.cuda(), x, list(case.kernel), case.groups, stride,
                                          padding, dilation)


def test_padding_taps_multiply_zeros_on_every_axis():
    # A weight at a tap outside the input enters the sum as w * 0 (the zero-padded unfold
    # formulation): an infinite weight there gives NaN whichever axis the tap leaves by.
    x = torch.ones(1, 1, 3, 3, device="cuda")
    for place in ((0, 1, 0, 1), (1, 0, 1, 0)):  # row -1 at output (0, 1); column -1 at (1, 0)
        w = torch.ones(1, 1, 3, 3, 3, 3, device="cuda")
        w[(0, 0) + place] = float("inf")
        y = ops.involution2d(x, w, [1, 1], [1, 1], [1, 1])
        assert torch.isnan(y[0, 0, place[2], place[3]]), place


def test_module_trains_on_cuda_with_amp():
    layer = involution.Involution2d(32, 32, kernel_size=7, stride=2, groups=2,
                                    reduce_ratio=4).cuda()
    x = torch.randn(4, 32, 31, 33, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    layer3d = involution.Involution3d(16, 16, kernel_size=3, padding=1, groups=2).cuda()
    layer3d(torch.randn(2, 16, 5, 6, 7, device="cuda")).sum().backward()


def test_compiled_module_matches_eager_on_cuda():
    layer = involution.Involution2d(16, 16, kernel_size=3, padding=1, groups=2).cuda()
    x = torch.randn(2, 16, 12, 12, device="cuda")
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))
    x3 = Case3d(1, 4, 2, (4, 5, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    a, b = x3.tensors(dtype=torch.float32, device="cuda")
    fn = torch.compile(lambda p, q: involution.involution3d(p, q, 1, 1), fullgraph=True)
    torch.testing.assert_close(fn(a, b), involution.involution3d(a, b, 1, 1))
