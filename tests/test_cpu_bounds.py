"""CPU kernels at the edges: memory bounded by the tensors whatever the stride, padding and
dilation, and one semantics for non-finite values at taps that read padding (the zero-padded
unfold formulation's: w * 0 on every axis, forward and both gradients, 2-D and 3-D)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import involution2d_reference, involution3d_reference, random_cases, random_cases_3d

import involution

ops = torch.ops.involution


def gather_reference(x, w, stride, padding, dilation):
    """Involution by index arithmetic (no padded copy, so any stride, padding and dilation that
    fit in int64 work), differentiable: taps outside the input read 0 (w * 0)."""
    dims = x.dim() - 2
    b, c = x.shape[:2]
    g = w.shape[1]
    kernel, out = w.shape[2:2 + dims], w.shape[2 + dims:]
    wc = w.repeat_interleave(c // g, dim=1)
    y = x.new_zeros(b, c, *out)
    taps = torch.cartesian_prod(*[torch.arange(k) for k in kernel]).view(-1, dims)
    for tap in taps.tolist():
        xs, mask = x, torch.ones(out, dtype=torch.bool)
        for a in range(dims):
            idx = [o * stride[a] - padding[a] + tap[a] * dilation[a] for o in range(out[a])]
            valid = torch.tensor([0 <= i < x.shape[2 + a] for i in idx])
            safe = torch.tensor([i if 0 <= i < x.shape[2 + a] else 0 for i in idx])
            xs = xs.index_select(2 + a, safe)
            shape = [1] * dims
            shape[a] = out[a]
            mask = mask & valid.view(shape)
        y = y + wc[(slice(None), slice(None)) + tuple(tap)] * torch.where(mask, xs, 0)
    return y


# --- Memory bounded by the tensors whatever the stride, padding and dilation ------------------

# (input shape, kernel, stride, padding, dilation): each made the CPU kernels stage buffers sized
# by the stride or dilation (1.9 GB for the first; bad_alloc or a length error for the next).
HUGE_GEOMETRIES = [
    ((1, 16, 8, 8), (3, 3), [512, 512], [1, 1], [1, 1]),
    ((1, 16, 8, 8), (3, 3), [2**40, 2], [1, 1], [1, 1]),
    ((1, 16, 8, 8), (3, 3), [2**62, 1], [1, 1], [1, 1]),
    ((1, 16, 8, 8), (3, 3), [1, 1], [1, 2**20], [1, 2**20]),
    ((1, 16, 8, 8), (3, 3), [1, 2**33], [2**34, 1], [2**34, 1]),
    ((1, 4, 3, 5, 5), (3, 3, 3), [2**35, 3, 2**30], [1, 1, 1], [1, 1, 1]),
    ((1, 4, 3, 5, 5), (2, 3, 3), [1, 1, 1], [2**30, 1, 1], [2**31, 1, 1]),
]


def _sizes(shape, kernel, stride, padding, dilation):
    dims = len(kernel)
    return [(shape[2 + a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
            for a in range(dims)]


@pytest.mark.parametrize("geometry", HUGE_GEOMETRIES, ids=lambda g: str(g[2:]))
def test_huge_geometry_matches_reference(geometry):
    shape, kernel, stride, padding, dilation = geometry
    out = _sizes(shape, kernel, stride, padding, dilation)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(shape[0], 2, *kernel, *out, dtype=torch.float64, generator=gen,
                    requires_grad=True)
    op = ops.involution2d if len(kernel) == 2 else ops.involution3d
    y = op(x, w, stride, padding, dilation)
    expected = gather_reference(x, w, stride, padding, dilation)
    torch.testing.assert_close(y, expected)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w), gy)
    expected_grads = torch.autograd.grad(expected, (x, w), gy)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch, involution
    torch.set_num_threads(1)
    cases = eval(sys.argv[1])
    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    def run(shape, kernel, stride, padding, dilation):
        out = [(shape[2 + a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
               for a in range(len(kernel))]
        x = torch.randn(*shape, requires_grad=True)
        w = torch.randn(shape[0], 2, *kernel, *out, requires_grad=True)
        ops = torch.ops.involution
        op = ops.involution2d if len(kernel) == 2 else ops.involution3d
        op(x, w, stride, padding, dilation).sum().backward()
    run((1, 16, 8, 8), (3, 3), [1, 1], [1, 1], [1, 1])  # warm up: the library, autograd
    base = peak_mb()
    for case in cases:
        run(*case)
    print(peak_mb() - base)
""")


def test_huge_geometry_memory_is_bounded():
    """The peak memory of forward and backward over every geometry above, in a fresh process:
    the tensors are a few KB, so the staging may add at most a few MB (it added 1.9 GB)."""
    # Run from where this process found the package, so the child imports the same one.
    package_root = Path(involution.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, repr(HUGE_GEOMETRIES)],
                            capture_output=True, text=True, timeout=300, cwd=package_root)
    assert result.returncode == 0, result.stderr[-3000:]
    growth_mb = float(result.stdout.split()[-1])
    assert growth_mb < 32, f"peak memory grew by {growth_mb:.0f} MB"


# --- Non-finite weights at taps that read padding: w * 0 on every axis ----------------------

def test_inf_weight_at_padding_tap_is_nan_on_every_axis():
    x = torch.ones(1, 1, 3, 3)
    for tap, out in [((0, 1), (0, 1)), ((1, 0), (1, 0)), ((2, 1), (2, 1)), ((1, 2), (1, 2))]:
        w = torch.ones(1, 1, 3, 3, 3, 3)
        w[(0, 0) + tap + out] = float("inf")  # tap reads row/column -1 or 3: padding
        y = ops.involution2d(x, w, [1, 1], [1, 1], [1, 1])
        assert torch.isnan(y[(0, 0) + out]), (tap, out, y)
        y[(0, 0) + out] = 8.0
        assert torch.equal(torch.isfinite(y), torch.ones_like(y, dtype=torch.bool))


def _poison(t, gen, count=3):
    t = t.detach().clone()
    flat = t.view(-1)
    idx = torch.randint(0, flat.numel(), (count,), generator=gen)
    values = torch.tensor([float("inf"), float("-inf"), float("nan")])[:count]
    flat[idx] = values.to(t.dtype)
    return t


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_finite_matches_zero_padded_unfold(dims, dtype):
    """Inf and NaN in the weight (forward, input gradient) and in grad_output (weight gradient)
    give exactly the NaN/Inf pattern of the zero-padded unfold formulation, on every axis."""
    cases = random_cases(40, seed=5) if dims == 2 else random_cases_3d(25, seed=5)
    reference = involution2d_reference if dims == 2 else involution3d_reference
    fwd = ops.involution2d if dims == 2 else ops.involution3d
    bwi = ops._involution2d_backward_input if dims == 2 else ops._involution3d_backward_input
    bww = ops._involution2d_backward_weight if dims == 2 else ops._involution3d_backward_weight
    gen = torch.Generator().manual_seed(1)
    checked_padding_taps = 0
    for case in cases:
        if not any(case.padding):
            continue
        checked_padding_taps += 1
        x, w = case.tensors(dtype=torch.float64, generator=gen)
        w = _poison(w, gen)
        stride, padding, dilation = case.params()
        y = fwd(x.to(dtype), w.to(dtype), stride, padding, dilation)
        xr = x.clone().requires_grad_()
        wr = w.clone().requires_grad_()
        expected = reference(xr, wr, stride, padding, dilation)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
        torch.testing.assert_close(y.double(), expected.detach(), equal_nan=True, **tol,
                                   msg=lambda m: f"{case}: forward: {m}")
        gy = _poison(torch.randn(expected.shape, dtype=torch.float64, generator=gen), gen)
        gx_ref, gw_ref = torch.autograd.grad(expected, (xr, wr), gy)
        gx = bwi(gy.to(dtype), w.to(dtype), list(case.size), stride, padding, dilation)
        torch.testing.assert_close(gx.double(), gx_ref, equal_nan=True, **tol,
                                   msg=lambda m: f"{case}: input gradient: {m}")
        gw = bww(gy.to(dtype), x.to(dtype), list(case.kernel), case.groups, stride, padding,
                 dilation)
        torch.testing.assert_close(gw.double(), gw_ref, equal_nan=True, **tol,
                                   msg=lambda m: f"{case}: weight gradient: {m}")
    assert checked_padding_taps >= 10
