"""The fused ops fused_involution2d/3d: equal to the span conv followed by the involution op, in
value and in all four gradients, for every geometry the unfused op takes; the usual op checks
(gradcheck, gradgradcheck, opcheck, compile, export, TorchScript, autocast, errors); and what
they save for backward."""

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DEVICES,
    Case,
    Case3d,
    involution2d_reference,
    involution3d_reference,
    random_cases,
    random_cases_3d,
)

import involution

ops = torch.ops.involution


def fused_operands(case, reduced_channels, bias=True, dtype=torch.float64, device="cpu",
                   requires_grad=False, seed=0):
    """input, reduced, span_weight, span_bias of a case (span_bias None without bias)."""
    gen = torch.Generator().manual_seed(seed)
    dims = len(case.size)
    taps = 1
    for k in case.kernel:
        taps *= k
    x = torch.randn(case.batch, case.channels, *case.size, dtype=dtype, generator=gen)
    z = torch.randn(case.batch, reduced_channels, *case.out, dtype=dtype, generator=gen)
    s = torch.randn(case.groups * taps, reduced_channels, *([1] * dims), dtype=dtype,
                    generator=gen) / reduced_channels ** 0.5
    b = torch.randn(case.groups * taps, dtype=dtype, generator=gen) if bias else None
    tensors = [t.to(device) if t is not None else None for t in (x, z, s, b)]
    return [t.requires_grad_(requires_grad) if t is not None else None for t in tensors]


def composite(x, z, s, b, case, reference=False):
    """The unfused formulation: span conv, view, involution (the slow loop reference or the
    involution op)."""
    dims = len(case.size)
    conv = F.conv2d if dims == 2 else F.conv3d
    w = conv(z, s, b).view(case.batch, case.groups, *case.kernel, *case.out)
    if reference:
        ref = involution2d_reference if dims == 2 else involution3d_reference
        return ref(x, w, *case.params())
    op = ops.involution2d if dims == 2 else ops.involution3d
    return op(x, w, *case.params())


def fused(x, z, s, b, case):
    op = ops.fused_involution2d if len(case.size) == 2 else ops.fused_involution3d
    return op(x, z, s, b, list(case.kernel), *case.params())


def check_against_reference(case, reduced_channels, bias, device, dtype=torch.float64,
                            tol=None):
    x, z, s, b = fused_operands(case, reduced_channels, bias, dtype=dtype, device=device,
                                requires_grad=True)
    y = fused(x, z, s, b, case)
    ref_inputs = [t.detach().double().requires_grad_() if t is not None else None
                  for t in (x, z, s, b)]
    y_ref = composite(*ref_inputs, case, reference=True)
    kw = {} if tol is None else {"atol": tol, "rtol": tol}
    torch.testing.assert_close(y.double(), y_ref, **kw)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    wanted = [t for t in (x, z, s, b) if t is not None]
    grads = torch.autograd.grad(y, wanted, gy.to(y))
    ref_grads = torch.autograd.grad(y_ref, [t for t in ref_inputs if t is not None], gy)
    for name, g, r in zip(("input", "reduced", "span_weight", "span_bias"), grads, ref_grads):
        torch.testing.assert_close(g.double(), r, msg=lambda m: f"{name}: {m}", **kw)


CASES_2D = random_cases(14, seed=23)
CASES_3D = random_cases_3d(6, seed=29)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES_2D, ids=str)
def test_2d_matches_the_composite(case, device):
    reduced = 1 + (case.channels * 7 + case.batch) % 5
    check_against_reference(case, reduced, bias=case.batch % 2 == 1, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES_3D, ids=str)
def test_3d_matches_the_composite(case, device):
    check_against_reference(case, 3, bias=case.groups != 2, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [
    # RedNet's layer at a reduced size: K = 7, 16 channels per group, R = C / 4.
    Case(2, 32, 2, (15, 13), (7, 7), (1, 1), (3, 3), (1, 1)),
    Case(2, 32, 2, (15, 14), (7, 7), (2, 2), (3, 3), (1, 1)),
    # The stem: K = 3; more pixels than a unit of the weight-side backward (4096).
    Case(1, 8, 2, (70, 66), (3, 3), (1, 1), (1, 1), (1, 1)),
    # More reduced channels than a register block of the span products, and an odd count.
    Case(1, 12, 3, (9, 9), (3, 5), (1, 2), (1, 2), (1, 1)),
], ids=str)
def test_rednet_like_shapes(case, device):
    check_against_reference(case, reduced_channels=case.channels // 4 + 13, bias=True,
                            device=device)


# RedNet's width geometries (kernel width 3 or 7, width stride 1 or 2, width dilation 1) with
# C/G a multiple of every instruction set's vector width run the kernels that keep channels in
# the SIMD lanes (forward; the input gradient at kernel width 7, width stride 1, or 2 on rows
# of at most 16 pixels), and the fused forward generates its kernel 64 pixels at a time: one
# and two vectors of channels and both together (8, 16, 24, 48 per group), widths around the
# blocks of 6 and 12 pixels and the 64-pixel tiles, tiles spanning several output rows, padding
# of 0 and wider than the kernel, height strides and dilations, 3-D.
CHANNEL_LANE_CASES = [
    Case(2, 16, 1, (9, 13), (7, 7), (1, 1), (3, 3), (1, 1)),
    Case(1, 32, 2, (12, 70), (7, 7), (1, 1), (3, 3), (1, 1)),
    Case(2, 48, 2, (11, 30), (3, 7), (2, 2), (1, 3), (2, 1)),
    Case(1, 24, 3, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    Case(1, 8, 1, (10, 29), (5, 3), (1, 2), (0, 0), (1, 1)),
    Case(2, 16, 2, (7, 7), (7, 7), (3, 1), (4, 9), (2, 1)),
    Case(1, 16, 1, (4, 140), (1, 3), (1, 1), (0, 1), (1, 1)),
    Case(1, 16, 1, (9, 9), (3, 7), (2, 1), (0, 1), (1, 1)),
    # Width stride 2 on narrow rows: the input gradient from grad_output rows spread 2 apart.
    Case(2, 32, 2, (9, 14), (7, 7), (2, 2), (3, 3), (1, 1)),
    Case(1, 48, 1, (6, 11), (5, 7), (1, 2), (2, 1), (2, 1)),
    Case(1, 16, 1, (5, 16), (3, 7), (2, 2), (1, 5), (1, 1)),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, None), (torch.float32, 1e-4),
                                       (torch.float16, 2e-2), (torch.bfloat16, 1e-1)], ids=str)
@pytest.mark.parametrize("case", CHANNEL_LANE_CASES, ids=str)
def test_channel_lane_kernels(case, dtype, tol):
    x, z, s, b = fused_operands(case, 5, dtype=dtype, requires_grad=True)
    inputs64 = [t.detach().double().requires_grad_() for t in (x, z, s, b)]
    y_ref = composite(*inputs64, case, reference=True)
    kw = {} if tol is None else {"atol": tol, "rtol": tol}
    gy = torch.randn(y_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    refs = torch.autograd.grad(y_ref, inputs64, gy)
    for y in (fused(x, z, s, b, case), composite(x, z, s, b, case)):
        torch.testing.assert_close(y.double(), y_ref, **kw)
        grads = torch.autograd.grad(y, (x, z, s, b), gy.to(dtype))
        for name, g, r in zip(("input", "reduced", "span_weight", "span_bias"), grads, refs):
            # Sums of up to C/G * taps (or pixels) products: the tolerance scales with them.
            g_kw = kw if tol is None else {"atol": tol * 30, "rtol": tol * 3}
            torch.testing.assert_close(g.double(), r, msg=lambda m: f"{name}: {m}", **g_kw)


def test_channel_lane_kernels_3d_and_non_finite():
    check_against_reference(Case3d(1, 16, 1, (5, 4, 11), (2, 3, 7), (2, 1, 1), (1, 1, 3),
                                   (1, 2, 1)), 6, True, "cpu")
    case = Case3d(2, 16, 2, (4, 6, 9), (3, 3, 7), (1, 1, 2), (1, 2, 3), (2, 1, 1))
    check_against_reference(case, 6, True, "cpu")
    # A non-finite weight at a tap outside the input makes its pixel NaN (w * 0), as the sums
    # over taps inside it would: the fused and unfused forward agree with the reference.
    x, z, s, b = fused_operands(case, 6)
    s = s.clone()
    s.view(s.shape[0], -1)[0, 0] = float("inf")  # tap (0, 0, 0) of group 0: outside at borders
    y_ref = composite(x, z, s, b, case, reference=True)
    assert y_ref.isnan().any() and not y_ref.isnan().all()
    torch.testing.assert_close(fused(x, z, s, b, case), y_ref, equal_nan=True)
    torch.testing.assert_close(composite(x, z, s, b, case), y_ref, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2),
                                       (torch.bfloat16, 1e-1)])
def test_dtypes(dtype, tol, device):
    case = Case(2, 8, 2, (11, 12), (3, 3), (2, 1), (1, 1), (1, 1))
    x, z, s, b = fused_operands(case, 5, dtype=dtype, device=device)
    y = fused(x, z, s, b, case)
    assert y.dtype == dtype
    # The composite in the same dtype rounds the generated kernel to it, as the fused op does.
    torch.testing.assert_close(y, composite(x, z, s, b, case), atol=tol, rtol=tol)
    check_against_reference(case, 5, True, device, dtype=dtype, tol=tol * 10)


@pytest.mark.parametrize("device", DEVICES)
def test_agrees_with_the_unfused_op_in_float32(device):
    case = Case(3, 16, 4, (17, 19), (7, 7), (1, 1), (3, 3), (1, 1))
    x, z, s, b = fused_operands(case, 4, dtype=torch.float32, device=device, requires_grad=True)
    y, y_ref = fused(x, z, s, b, case), composite(x, z, s, b, case)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(y)
    for g, r in zip(torch.autograd.grad(y, (x, z, s, b), gy),
                    torch.autograd.grad(y_ref, (x, z, s, b), gy)):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_and_gradgradcheck(dims, device):
    if dims == 2:
        case = Case(2, 4, 2, (6, 5), (3, 2), (2, 1), (1, 1), (1, 2))
    else:
        case = Case3d(1, 4, 2, (4, 3, 5), (2, 2, 3), (1, 2, 1), (1, 0, 1), (1, 1, 1))
    for bias in (True, False):
        inputs = [t for t in fused_operands(case, 3, bias, device=device, requires_grad=True)
                  if t is not None]

        def fn(x, z, s, b=None):
            return fused(x, z, s, b, case)

        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def opcheck_samples():
    samples = []
    for dims in (2, 3):
        case = (Case(2, 4, 2, (7, 6), (3, 3), (2, 1), (1, 1), (1, 1)) if dims == 2 else
                Case3d(1, 4, 2, (4, 5, 3), (3, 1, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2)))
        fwd = getattr(ops, f"fused_involution{dims}d").default
        bwd = getattr(ops, f"_fused_involution{dims}d_backward").default
        for bias in (True, False):
            for requires_grad in (False, True):
                x, z, s, b = fused_operands(case, 3, bias, requires_grad=requires_grad)
                args = (list(case.kernel), *case.params())
                samples.append((fwd, (x, z, s, b, *args)))
                gy = torch.randn(case.batch, case.channels, *case.out, dtype=torch.float64)
                samples.append((bwd, (gy, x.detach(), z.detach(), s.detach(),
                                      b.detach() if b is not None else None, *args,
                                      [True, True, True, bias])))
        x, z, s, b = fused_operands(case, 3, True)
        samples.append((fwd, (x.to(memory_format=torch.channels_last if dims == 2 else
                                   torch.channels_last_3d), z, s, b, list(case.kernel),
                              *case.params())))
        samples.append((bwd, (gy, x, z, s, b, list(case.kernel), *case.params(),
                              [False, True, False, True])))
    return samples


@pytest.mark.parametrize("op,args", opcheck_samples(),
                         ids=lambda v: str(v) if isinstance(v, torch._ops.OpOverload) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_zero_and_empty_channels(device):
    for case in (Case(0, 4, 2, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
                 Case(2, 0, 2, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
                 Case3d(0, 2, 1, (3, 4, 5), (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1))):
        x, z, s, b = fused_operands(case, 3, device=device, requires_grad=True)
        y = fused(x, z, s, b, case)
        assert y.shape == (case.batch, case.channels, *case.out)
        grads = torch.autograd.grad(y.sum(), (x, z, s, b), allow_unused=True)
        for g, t in zip(grads, (x, z, s, b)):
            assert g is None or (g.shape == t.shape and not g.abs().sum().item())


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last(device):
    case = Case(2, 8, 2, (9, 10), (3, 3), (1, 1), (1, 1), (1, 1))
    x, z, s, b = fused_operands(case, 4, device=device)
    expected = composite(x, z, s, b, case, reference=True)
    layouts = {
        "channels_last": (x.to(memory_format=torch.channels_last),
                          z.to(memory_format=torch.channels_last)),
        "transposed": (x.transpose(2, 3).contiguous().transpose(2, 3),
                       z.transpose(2, 3).contiguous().transpose(2, 3)),
        "strided": (torch.stack([x, x], -1)[..., 0], torch.stack([z, z], -1)[..., 1]),
    }
    for name, (xl, zl) in layouts.items():
        xl, zl = xl.detach().requires_grad_(), zl.detach().requires_grad_()
        y = fused(xl, zl, s, b, case)
        torch.testing.assert_close(y, expected, msg=name)
        if name == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        gx, gz = torch.autograd.grad(y.sum(), (xl, zl))
        if name == "channels_last":
            assert gx.is_contiguous(memory_format=torch.channels_last)
        rx, rz = x.detach().requires_grad_(), z.detach().requires_grad_()
        rgx, rgz = torch.autograd.grad(composite(rx, rz, s, b, case).sum(), (rx, rz))
        torch.testing.assert_close(gx, rgx, msg=name)
        torch.testing.assert_close(gz, rgz, msg=name)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("x_layout,gy_layout", [("channels_last", "channels_last"),
                                                ("channels_last", "contiguous"),
                                                ("contiguous", "channels_last")])
def test_channels_last_input_and_grad_output(dims, x_layout, gy_layout):
    # channels_last input and grad_output, alone or together, in 2-D and 3-D: the output and
    # grad_input keep the input's layout and every gradient equals the contiguous reference.
    # Many slabs (whole slabs per thread) and one slab (spread over the threads).
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    if dims == 2:
        cases = [Case(3, 12, 3, (9, 11), (3, 5), (2, 1), (1, 2), (1, 1)),
                 Case(1, 8, 1, (13, 10), (3, 3), (1, 1), (2, 1), (2, 1))]
    else:
        cases = [Case3d(2, 8, 2, (5, 6, 7), (3, 3, 3), (1, 2, 1), (1, 1, 1), (1, 1, 1)),
                 Case3d(1, 4, 1, (4, 5, 6), (3, 1, 3), (1, 1, 1), (1, 0, 1), (1, 1, 1))]
    for case in cases:
        x, z, s, b = fused_operands(case, 5)
        gy = torch.randn(case.batch, case.channels, *case.out, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(2))
        rx, rz, rs, rb = (t.detach().requires_grad_() for t in (x, z, s, b))
        expected = composite(rx, rz, rs, rb, case, reference=True)
        ref_grads = torch.autograd.grad(expected, (rx, rz, rs, rb), gy)
        xl = x.to(memory_format=fmt) if x_layout == "channels_last" else x
        gyl = gy.to(memory_format=fmt) if gy_layout == "channels_last" else gy
        xl, zl, sl, bl = (t.detach().requires_grad_() for t in (xl, z, s, b))
        y = fused(xl, zl, sl, bl, case)
        assert y.is_contiguous(memory_format=fmt if x_layout == "channels_last"
                               else torch.contiguous_format)
        torch.testing.assert_close(y, expected)
        grads = torch.autograd.grad(y, (xl, zl, sl, bl), gyl)
        if x_layout == "channels_last":
            assert grads[0].is_contiguous(memory_format=fmt)
        for name, g, r in zip(("input", "reduced", "span_weight", "span_bias"), grads,
                              ref_grads):
            torch.testing.assert_close(g, r, msg=lambda m: f"{case} {name}: {m}")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, None), (torch.float32, 2e-4),
                                       (torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
def test_channels_last_random_sweep(dtype, tol):
    # channels_last inputs are computed in their layout (no copy): random 2-D and 3-D
    # geometries with channels per group that fill whole SIMD vectors (8, 16, 32, 48), leave a
    # rest (3, 17, 24) or are one, borders, strides, dilations, reduced in either layout;
    # forward and all four gradients against the composite in float64.
    rng = random.Random(11)
    cases = random_cases(16, seed=41, max_size=14) + random_cases_3d(6, seed=43)
    for i, case in enumerate(cases):
        case = case._replace(channels=case.groups * rng.choice([1, 3, 8, 16, 17, 24, 32, 48]))
        fmt = torch.channels_last if len(case.size) == 2 else torch.channels_last_3d
        reduced = rng.choice([1, 5, 8, 16, 40])
        x, z, s, b = fused_operands(case, reduced, bias=i % 3 != 0, seed=i)
        gy = torch.randn(case.batch, case.channels, *case.out, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(i))
        inputs = [t for t in (x, z, s, b) if t is not None]
        ref = [t.detach().requires_grad_() for t in inputs]
        expected = composite(*ref, *([None] if b is None else []), case)
        ref_grads = torch.autograd.grad(expected, ref, gy)
        xl = x.to(dtype).contiguous(memory_format=fmt)
        zl = z.to(dtype).contiguous(memory_format=fmt) if i % 2 == 0 else z.to(dtype)
        gyl = gy.to(dtype).contiguous(memory_format=fmt) if i % 4 != 1 else gy.to(dtype)
        args = [t.to(dtype).detach().requires_grad_() for t in (xl, zl, s)]
        args.append(b.to(dtype).detach().requires_grad_() if b is not None else None)
        y = fused(*args, case)
        assert y.is_contiguous(memory_format=fmt)
        kw = {} if tol is None else {"atol": tol, "rtol": tol}
        scale = expected.abs().max().item() + 1
        torch.testing.assert_close(y.double() / scale, expected / scale, msg=str(case), **kw)
        grads = torch.autograd.grad(y, [t for t in args if t is not None], gyl)
        assert grads[0].is_contiguous(memory_format=fmt)
        for name, g, r in zip(("input", "reduced", "span_weight", "span_bias"), grads,
                              ref_grads):
            scale = r.abs().max().item() + 1
            torch.testing.assert_close(g.double() / scale, r / scale,
                                       msg=lambda m: f"{case} {name}: {m}", **kw)


def test_channels_last_gradcheck():
    # gradcheck and gradgradcheck with channels_last input and reduced, 2-D and 3-D.
    for case in (Case(2, 16, 2, (6, 7), (3, 3), (2, 1), (1, 1), (1, 2)),
                 Case3d(1, 8, 1, (4, 5, 4), (3, 1, 3), (1, 2, 1), (1, 0, 1), (1, 1, 1))):
        fmt = torch.channels_last if len(case.size) == 2 else torch.channels_last_3d
        x, z, s, b = fused_operands(case, 3)
        x, z = x.contiguous(memory_format=fmt), z.contiguous(memory_format=fmt)
        inputs = [t.detach().requires_grad_() for t in (x, z, s, b)]
        fn = lambda *t: fused(*t, case)  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_non_finite_as_contiguous(dims):
    # Inf and NaN in reduced (so in the generated kernel, padding taps included) and in
    # grad_output: the channels_last kernels give the NaN/Inf pattern of the contiguous ones
    # (taps outside the input enter the sums as w * 0).
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    cases = (random_cases(12, seed=51, max_size=9) if dims == 2
             else random_cases_3d(6, seed=53))
    gen = torch.Generator().manual_seed(3)
    for i, case in enumerate(cases):
        case = case._replace(channels=case.groups * (8 if i % 2 else 3))
        x, z, s, b = fused_operands(case, 4, seed=i)
        z, s = z.clone(), s.clone()
        if i % 2:  # every tap of a pixel
            z.view(-1)[torch.randint(0, z.numel(), (2,), generator=gen)] = float("inf")
        else:  # one tap of every pixel, at the border a tap outside the input
            s.view(s.shape[0], -1)[torch.randint(0, s.shape[0], (1,), generator=gen), 0] = (
                float("inf"))
        gy = torch.randn(case.batch, case.channels, *case.out, dtype=torch.float64,
                         generator=gen)
        gy.view(-1)[torch.randint(0, gy.numel(), (1,), generator=gen)] = float("nan")
        results = []
        for layout in (torch.contiguous_format, fmt):
            args = [t.contiguous(memory_format=layout).requires_grad_()
                    for t in (x, z)] + [s.detach().requires_grad_(), b.detach().requires_grad_()]
            y = fused(*args, case)
            results.append((y, *torch.autograd.grad(y, args, gy.contiguous(memory_format=layout))))
        for name, a, c in zip(("output", "input", "reduced", "span_weight", "span_bias"),
                              *results):
            torch.testing.assert_close(c, a, equal_nan=True, msg=lambda m: f"{case} {name}: {m}")


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_opcheck(dims):
    # The fake (meta) kernels give channels_last inputs the strides the CPU kernels return.
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    case = (Case(2, 16, 2, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1)) if dims == 2
            else Case3d(2, 16, 2, (4, 5, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)))
    x, z, s, b = fused_operands(case, 4)
    x, z = x.contiguous(memory_format=fmt), z.contiguous(memory_format=fmt)
    gy = torch.randn(case.batch, case.channels, *case.out,
                     dtype=torch.float64).contiguous(memory_format=fmt)
    op = ops.fused_involution2d if dims == 2 else ops.fused_involution3d
    backward = ops._fused_involution2d_backward if dims == 2 else ops._fused_involution3d_backward
    torch.library.opcheck(op, (x.requires_grad_(), z.requires_grad_(), s.requires_grad_(),
                               b.requires_grad_(), list(case.kernel), *case.params()))
    torch.library.opcheck(backward, (gy, x.detach(), z.detach(), s.detach(), b.detach(),
                                     list(case.kernel), *case.params(), [True] * 4))


def test_deterministic_and_independent_of_thread_count():
    # Few slabs (each spread over the threads) and many slabs (whole slabs per thread); the
    # weight-side backward's units of rows are shared out between threads either way.
    # The channels_last kernels: blocks of pixels and of input rows, units of pixels.
    for case, layout in ((Case(1, 16, 1, (47, 45), (7, 7), (1, 1), (3, 3), (1, 1)), None),
                         (Case(4, 16, 4, (17, 15), (7, 7), (1, 1), (3, 3), (1, 1)), None),
                         (Case(3, 32, 2, (45, 47), (7, 7), (2, 1), (3, 3), (1, 1)),
                          torch.channels_last)):
        x, z, s, b = fused_operands(case, 6, dtype=torch.float32)
        if layout is not None:
            x, z = x.contiguous(memory_format=layout), z.contiguous(memory_format=layout)
        x, z, s, b = (t.requires_grad_() for t in (x, z, s, b))
        threads = torch.get_num_threads()
        results = []
        try:
            for n in (1, 2, 3, 2, 1):
                torch.set_num_threads(n)
                y = fused(x, z, s, b, case)
                results.append((y, *torch.autograd.grad(y, (x, z, s, b), torch.ones_like(y))))
        finally:
            torch.set_num_threads(threads)
        for other in results[1:]:
            for a, c in zip(results[0], other):
                assert torch.equal(a, c)


# Outputs of fewer pixels per sample than reduced channels (RedNet's 7x7 stage 4) take the
# weight-side backward that keeps dW of all slabs and sums gS per group and gz over all groups
# at once; rows of at most 8 pixels take the 8-lane row kernels on AVX-512 machines.
SMALL_OUTPUT_CASES = [
    Case(2, 32, 2, (7, 7), (7, 7), (2, 2), (3, 3), (1, 1)),
    Case(3, 16, 4, (5, 3), (3, 5), (1, 1), (1, 2), (1, 1)),
    Case(2, 48, 3, (8, 6), (3, 3), (2, 1), (1, 1), (2, 1)),
    Case3d(2, 16, 2, (3, 4, 5), (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, None), (torch.float32, 1e-4),
                                       (torch.bfloat16, 1e-1)], ids=str)
@pytest.mark.parametrize("case", SMALL_OUTPUT_CASES, ids=str)
def test_small_outputs(case, dtype, tol):
    pixels = 1
    for o in case.out:
        pixels *= o
    reduced = pixels + 7  # more reduced channels than output pixels per sample
    check_against_reference(case, reduced, bias=True, device="cpu", dtype=dtype, tol=tol)
    x, z, s, b = fused_operands(case, reduced, dtype=torch.float32, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3, 2):
            torch.set_num_threads(n)
            y = fused(x, z, s, b, case)
            results.append(torch.autograd.grad(y, (x, z, s, b), torch.ones_like(y)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


def test_saves_no_tensor_of_the_kernel_size():
    case = Case(2, 16, 1, (14, 14), (7, 7), (1, 1), (3, 3), (1, 1))
    x, z, s, b = fused_operands(case, 4, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused(x, z, s, b, case)
    kernel_numel = case.batch * case.groups * 49 * 14 * 14
    assert saved, "nothing saved for backward"
    assert all(t.numel() < kernel_numel for t in saved), [t.shape for t in saved]
    assert {t.data_ptr() for t in saved} <= {t.data_ptr() for t in (x, z, s, b)}


def test_functional_and_cpp_names():
    case = Case(1, 4, 2, (8, 8), (3, 3), (2, 2), (1, 1), (1, 1))
    x, z, s, b = fused_operands(case, 2)
    expected = fused(x, z, s, b, case)
    for kwargs in ({"kernel_size": 3, "stride": 2, "padding": 1},
                   {"kernel_size": (3, 3), "stride": (2, 2), "padding": [1, 1], "dilation": 1}):
        torch.testing.assert_close(
            involution.functional.fused_involution2d(x, z, s, b, **kwargs), expected)
    torch.testing.assert_close(involution.fused_involution2d(x, z, s, b, 3, 2, 1), expected)
    with pytest.raises(TypeError, match="kernel_size is required"):
        involution.functional.fused_involution2d(x, z, s, b)
    case3 = Case3d(1, 4, 2, (4, 4, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    x, z, s, b = fused_operands(case3, 2)
    torch.testing.assert_close(
        involution.functional.fused_involution3d(x, z, s, b, kernel_size=3, padding=1),
        fused(x, z, s, b, case3))


def test_cpu_autocast_runs_in_bfloat16():
    case = Case(1, 8, 2, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1))
    x, z, s, b = fused_operands(case, 4, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused(x, z, s, b, case)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), composite(x, z, s, b, case), atol=0.1, rtol=0.05)


def test_compile_fullgraph_dynamic_and_export():
    torch._dynamo.reset()
    kernel, params = [3, 3], ([2, 1], [1, 1], [1, 1])

    def loss(x, z, s, b):
        return ops.fused_involution2d(x, z, s, b, kernel, *params).square().sum()

    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend="aot_eager")
    for size in [(9, 10), (12, 11), (17, 13)]:
        case = Case(2, 6, 3, size, (3, 3), *params)
        inputs = fused_operands(case, 4, requires_grad=True)
        grads = torch.autograd.grad(compiled(*inputs), inputs)
        ref = [t.detach().requires_grad_() for t in inputs]
        ref_grads = torch.autograd.grad(composite(*ref, case).square().sum(), ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r)

    class Layer(torch.nn.Module):
        def forward(self, x, z, s, b):
            return ops.fused_involution2d(x, z, s, b, kernel, *params)

    case = Case(2, 6, 3, (9, 10), (3, 3), *params)
    inputs = fused_operands(case, 4)
    exported = torch.export.export(Layer(), tuple(inputs))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "involution.fused_involution2d.default" in targets
    torch.testing.assert_close(exported.module()(*inputs), composite(*inputs, case))


def test_inductor_training_matches_eager():
    torch._dynamo.reset()
    case = Case(2, 8, 2, (11, 9), (3, 3), (2, 2), (1, 1), (1, 1))
    inputs = fused_operands(case, 4, dtype=torch.float32, requires_grad=True)

    def step(x, z, s, b):
        return (fused(x, z, s, b, case) * 1.5).relu().square().sum()

    compiled = torch.compile(step)
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    ref = torch.autograd.grad(step(*inputs), inputs)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_torchscript():
    case = Case(1, 4, 2, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1))

    @torch.jit.script
    def scripted(x, z, s, b):
        return torch.ops.involution.fused_involution2d(x, z, s, b, [3, 3], [1, 1], [1, 1],
                                                       [1, 1])

    x, z, s, b = fused_operands(case, 2, requires_grad=True)
    y = scripted(x, z, s, b)
    torch.testing.assert_close(y, fused(x, z, s, b, case))
    y.sum().backward()
    assert x.grad is not None and s.grad is not None and b.grad is not None


def bad_inputs():
    case = Case(2, 8, 2, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1))
    x, z, s, b = fused_operands(case, 4)
    k = [3, 3]
    p = ([1, 1], [1, 1], [1, 1])
    return [
        ((x, z, s.view(18, 4), b, k, *p), r"span_weight to be a 4-D tensor \(G \* taps, R, 1, 1\)"),
        ((x, z, s.expand(18, 4, 2, 1), b, k, *p), "weight of a 1x1 convolution"),
        ((x, z, s[:17], b, k, *p), "positive multiple of the number of taps"),
        ((x, z, torch.randn(27, 4, 1, 1, dtype=torch.float64), None, k, *p),
         r"number of channels \(8\) to be divisible by the number of groups \(3"),
        ((x, z[:, :3], s, b, k, *p), "span_weight.size\\(1\\) to equal the number of reduced"),
        ((x, z[:1], s, b, k, *p), "same batch size"),
        ((x, z[:, :, :8], s, b, k, *p), "reduced's spatial size"),
        ((x, z, s, b[:5], k, *p), "span_bias to be a 1-D tensor of span_weight.size\\(0\\) = 18"),
        ((x, z.float(), s, b, k, *p), "same dtype"),
        ((x, z, s.float(), b, k, *p), "same dtype"),
        ((x, z, s, b.float(), k, *p), "same dtype"),
        ((x, z, s, b, [3], *p), "kernel_size to have 2 elements"),
        ((x, z, s, b, [3, 0], *p), "kernel size >= 1"),
        ((x.long(), z, s, b, k, *p), "floating-point dtype"),
        ((x[0], z, s, b, k, *p), r"input to be a 4-D tensor \(B, C, H, W\)"),
        ((x, z, s, b, k, [0, 1], [1, 1], [1, 1]), "stride >= 1"),
    ]


@pytest.mark.parametrize("args,message", bad_inputs(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_errors_name_what_was_expected(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.fused_involution2d(*args)
    # The backward op runs the same checks (the C++ API has no Python guard).
    y_shape = (2, 8, 9, 9)
    with pytest.raises(RuntimeError, match=message):
        ops._fused_involution2d_backward(torch.zeros(y_shape, dtype=torch.float64), *args,
                                         [True, True, True, True])


def test_backward_checks_grad_output():
    case = Case(2, 8, 2, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1))
    x, z, s, b = fused_operands(case, 4)
    with pytest.raises(RuntimeError, match=r"expected grad_output of shape \[2, 8, 9, 9\]"):
        ops._fused_involution2d_backward(torch.zeros(2, 8, 9, 8, dtype=torch.float64), x, z, s,
                                         b, [3, 3], [1, 1], [1, 1], [1, 1], [True] * 4)


def test_random_sweep_against_unfused_op():
    # Wider than the parametrised cases: many small random geometries, float64, 2-D and 3-D,
    # compared with the involution op on the span conv's output (forward and gradients).
    rng = random.Random(5)
    for case in random_cases(25, seed=31, max_size=10) + random_cases_3d(8, seed=37):
        reduced = rng.randint(1, 9)
        bias = rng.random() < 0.5
        x, z, s, b = fused_operands(case, reduced, bias, requires_grad=True,
                                    seed=rng.randint(0, 99))
        inputs = [t for t in (x, z, s, b) if t is not None]
        y, y_ref = fused(x, z, s, b, case), composite(x, z, s, b, case)
        torch.testing.assert_close(y, y_ref, msg=str(case))
        gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, inputs, gy)
        for g, r in zip(grads, torch.autograd.grad(y_ref, inputs, gy)):
            torch.testing.assert_close(g, r, msg=str(case))


# ------------------------------------------------------------------------------ modules


MODULES = [
    (involution.Involution2d, (2, 8, 13, 11),
     dict(kernel_size=3, padding=1, stride=2, groups=2, reduce_ratio=2)),
    (involution.Involution2d, (2, 8, 12, 11),
     dict(kernel_size=(5, 3), padding=0, groups=4, reduce_ratio=2, bias=True)),
    (involution.Involution2d, (1, 16, 9, 9), dict(kernel_size=7, padding=3, groups=1)),
    (involution.Involution3d, (2, 4, 5, 6, 7),
     dict(kernel_size=3, padding=1, stride=2, groups=2, reduce_ratio=2)),
]


@pytest.mark.parametrize("cls,shape,kwargs", MODULES, ids=lambda v: str(v))
def test_modules_fused_and_unfused_agree(cls, shape, kwargs):
    torch.manual_seed(0)
    layer = cls(shape[1], 8, **kwargs).double()
    unfused = cls(shape[1], 8, fused=False, **kwargs).double()
    assert layer.fused and not unfused.fused
    assert layer.state_dict().keys() == unfused.state_dict().keys()
    unfused.load_state_dict(layer.state_dict())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = layer(x), unfused(x2)
    torch.testing.assert_close(y, y2)
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for (name, p), q in zip(layer.named_parameters(), unfused.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert "fused=False" in repr(unfused) and "fused" not in layer.extra_repr()
    scripted = torch.jit.script(layer.eval())
    torch.testing.assert_close(scripted(x), layer(x))


def test_module_runs_the_fused_op_and_falls_back_for_other_span_mappings():
    layer = involution.Involution2d(8, 8, kernel_size=3, padding=1, groups=2)
    x = torch.randn(1, 8, 9, 9)
    graph = torch.fx.experimental.proxy_tensor.make_fx(layer.eval())(x)
    targets = {n.target for n in graph.graph.nodes}
    assert ops.fused_involution2d.default in targets
    assert ops.involution2d.default not in targets
    # A span mapping that is not a plain 1x1 conv: the unfused path, with the same answer as
    # the composite.
    layer.span_mapping = torch.nn.Sequential(torch.nn.Conv2d(8, 18, 1), torch.nn.Tanh())
    graph = torch.fx.experimental.proxy_tensor.make_fx(layer)(x)
    targets = {n.target for n in graph.graph.nodes}
    assert ops.involution2d.default in targets and ops.fused_involution2d.default not in targets
    assert layer(x).shape == (1, 8, 9, 9)
    torch.jit.script(layer)  # the fallback scripts too


def saved_bytes(model, x):
    """Bytes of the distinct storages autograd saves for backward in one forward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def test_rednet_fused_saves_less_and_agrees():
    torch.manual_seed(0)
    fused_model = involution.models.RedNet((1, 1, 1, 1), num_classes=10,
                                           zero_init_residual=False)
    unfused_model = involution.models.RedNet((1, 1, 1, 1), num_classes=10,
                                             zero_init_residual=False, fused=False)
    unfused_model.load_state_dict(fused_model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for mode in ("train", "eval"):
        fused_model.train(mode == "train")
        unfused_model.train(mode == "train")
        torch.testing.assert_close(fused_model(x), unfused_model(x), atol=1e-4, rtol=1e-4)
    fused_model.train()
    unfused_model.train()
    # The first block saves no tensor of the generated kernel's size: (B, G*49, 16, 16) at
    # 64x64 input in layer1 (G = 4), in any view.
    kernel_numel = 2 * 4 * 49 * 16 * 16
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused_model.layer1[0](torch.randn(2, 64, 16, 16).requires_grad_())
    assert saved and all(t.numel() != kernel_numel for t in saved), [t.shape for t in saved]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unfused_model.layer1[0](torch.randn(2, 64, 16, 16).requires_grad_())
    assert any(t.numel() == kernel_numel for t in saved)  # the check can fail
    # What the fused model saves less of is the generated kernels, all of them.
    kernel_bytes = []
    hooks = [m.span.register_forward_hook(
        lambda mod, args, out: kernel_bytes.append(out.numel() * out.element_size()))
        for m in unfused_model.modules()
        if isinstance(m, involution.models.rednet.RedNetInvolution)]
    unfused_saved = saved_bytes(unfused_model, x)
    for h in hooks:
        h.remove()
    assert len(kernel_bytes) == 5
    # (less the span biases, which the fused op saves and the span conv does not)
    bias_bytes = sum(m.span.bias.numel() * 4 for m in fused_model.modules()
                     if isinstance(m, involution.models.rednet.RedNetInvolution))
    assert unfused_saved - saved_bytes(fused_model, x) == sum(kernel_bytes) - bias_bytes
