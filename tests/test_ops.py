"""The involution2d op family against the float64 reference: values, gradients, dtypes, layouts."""

import os

import pytest
import torch
from helpers import DEVICES, Case, involution2d_reference, random_cases

import involution
from involution.functional import involution2d
from involution.reference import involution2d_unfold

ops = torch.ops.involution
CASES = random_cases(24, seed=0)
DTYPE_TOLERANCES = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    # Half types: inputs are rounded, products accumulate in float32, the output is rounded once.
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def case_id(case):
    return (f"B{case.batch}C{case.channels}G{case.groups}_{case.size[0]}x{case.size[1]}"
            f"_k{case.kernel[0]}x{case.kernel[1]}_s{case.stride[0]}{case.stride[1]}"
            f"_p{case.padding[0]}{case.padding[1]}_d{case.dilation[0]}{case.dilation[1]}")


def test_the_two_references_agree():
    # The tap-loop reference of the tests and the unfold formulation of the package are
    # written independently; they must agree before either is trusted.
    for case in CASES[:8]:
        x, w = case.tensors()
        torch.testing.assert_close(involution2d_unfold(x, w, *case.params()),
                                   involution2d_reference(x, w, *case.params()))


def test_reference_matches_the_formula_elementwise():
    case = Case(1, 4, 2, (5, 6), (2, 3), (2, 1), (1, 2), (2, 1))
    x, w = case.tensors()
    ref = involution2d_reference(x, w, *case.params())
    oh, ow = case.out
    for c in range(4):
        for i in range(oh):
            for j in range(ow):
                total = 0.0
                for u in range(2):
                    for v in range(3):
                        r, s = i * 2 - 1 + u * 2, j - 2 + v
                        if 0 <= r < 5 and 0 <= s < 6:
                            total += w[0, c // 2, u, v, i, j].item() * x[0, c, r, s].item()
                assert abs(ref[0, c, i, j].item() - total) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_gradients_match_reference(case, device):
    x, w = case.tensors(requires_grad=True, device=device)
    y = ops.involution2d(x, w, *case.params())
    ref_x = x.detach().clone().requires_grad_()
    ref_w = w.detach().clone().requires_grad_()
    ref = involution2d_reference(ref_x, ref_w, *case.params())
    torch.testing.assert_close(y, ref, **DTYPE_TOLERANCES[torch.float64])
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    ref_gx, ref_gw = torch.autograd.grad(ref, (ref_x, ref_w), grad)
    torch.testing.assert_close(gx, ref_gx, **DTYPE_TOLERANCES[torch.float64])
    torch.testing.assert_close(gw, ref_gw, **DTYPE_TOLERANCES[torch.float64])


# The CPU kernels work on blocks: 8 channels of a group, 8 rows, one SIMD register of columns
# (2 to 16 lanes by dtype and instruction set). These cases straddle every block boundary.
BLOCK_CASES = [
    Case(2, 16, 1, (19, 21), (3, 5), (1, 1), (1, 2), (1, 1)),   # 2 full channel blocks
    Case(1, 18, 2, (17, 9), (3, 3), (2, 2), (2, 1), (2, 1)),    # 8 + 1 channels, strided
    Case(1, 34, 2, (9, 33), (7, 7), (1, 1), (3, 3), (1, 1)),    # 16 + 1 channels, wide rows
    Case(2, 8, 1, (25, 5), (5, 2), (3, 1), (2, 0), (1, 3)),     # rows in 3 blocks, tiny width
    Case(1, 24, 3, (8, 40), (1, 7), (1, 3), (0, 3), (1, 2)),    # exactly one row block
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=case_id)
def test_block_boundaries(case, dtype, device):
    x, w = case.tensors(dtype=dtype, requires_grad=True, device=device)
    y = ops.involution2d(x, w, *case.params())
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    ref = involution2d_reference(x64, w64, *case.params())
    tol = DTYPE_TOLERANCES[dtype]
    scale = (case.channels // case.groups * case.kernel[0] * case.kernel[1]) ** 0.5
    torch.testing.assert_close(y.double(), ref, atol=tol["atol"] * scale, rtol=tol["rtol"])
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad.double())
    torch.testing.assert_close(gx.double(), ref_gx, atol=tol["atol"] * scale, rtol=tol["rtol"])
    torch.testing.assert_close(gw.double(), ref_gw, atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES[:8], ids=case_id)
def test_dtypes(case, dtype, device):
    x, w = case.tensors(dtype=dtype, requires_grad=True, device=device)
    y = involution2d(x, w, case.stride, case.padding, case.dilation)
    assert y.dtype == dtype
    # The reference sees the same (rounded) inputs, in float64.
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    ref = involution2d_reference(x64, w64, *case.params())
    tol = DTYPE_TOLERANCES[dtype]
    torch.testing.assert_close(y.double(), ref, **tol)
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    assert gx.dtype == dtype and gw.dtype == dtype
    ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad.double())
    # Gradients sum up to C/G * KH * KW products; scale the tolerance with that count.
    scale = (case.channels // case.groups * case.kernel[0] * case.kernel[1]) ** 0.5
    torch.testing.assert_close(gx.double(), ref_gx, atol=tol["atol"] * scale, rtol=tol["rtol"])
    torch.testing.assert_close(gw.double(), ref_gw, atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES[:6], ids=case_id)
def test_gradcheck_and_gradgradcheck(case, device):
    case = case._replace(batch=1, size=(min(case.size[0], 7), min(case.size[1], 7)))
    if min(case.out) < 1:
        pytest.skip("geometry too small after shrinking")
    x, w = case.tensors(requires_grad=True, device=device)
    fn = lambda a, b: ops.involution2d(a, b, *case.params())  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_gradcheck_of_the_backward_ops():
    case = Case(2, 4, 2, (6, 5), (3, 2), (2, 1), (1, 1), (1, 2))
    x, w = case.tensors(requires_grad=True)
    gy = torch.randn(2, 4, *case.out, dtype=torch.float64, requires_grad=True)
    stride, padding, dilation = case.params()
    assert torch.autograd.gradcheck(
        lambda g, b: ops._involution2d_backward_input(g, b, list(case.size), stride, padding,
                                                      dilation), (gy, w))
    assert torch.autograd.gradcheck(
        lambda g, a: ops._involution2d_backward_weight(g, a, list(case.kernel), case.groups,
                                                       stride, padding, dilation), (gy, x))


def opcheck_samples():
    samples = []
    for i, case in enumerate(random_cases(4, seed=1, max_size=8)):
        for requires_grad in (False, True):
            x, w = case.tensors(requires_grad=requires_grad)
            gy = torch.randn(case.batch, case.channels, *case.out, dtype=torch.float64,
                             requires_grad=requires_grad)
            s, p, d = case.params()
            samples += [
                (ops.involution2d.default, (x, w, s, p, d)),
                (ops._involution2d_backward_input.default, (gy, w, list(case.size), s, p, d)),
                (ops._involution2d_backward_weight.default,
                 (gy, x, list(case.kernel), case.groups, s, p, d)),
            ]
    return samples


@pytest.mark.parametrize("op,args", opcheck_samples(),
                         ids=lambda v: str(v) if isinstance(v, torch._ops.OpOverload) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_zero_and_empty_channels(device):
    for case in (Case(0, 4, 2, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
                 Case(2, 0, 2, (7, 7), (3, 3), (2, 2), (1, 1), (1, 1))):
        x, w = case.tensors(requires_grad=True, device=device)
        y = ops.involution2d(x, w, *case.params())
        assert y.shape == (case.batch, case.channels, *case.out)
        y.sum().backward()
        assert x.grad.shape == x.shape and w.grad.shape == w.shape
        assert (w.grad == 0).all()


def test_input_without_rows_but_with_padding():
    # H = 0 with padding 1 and a 1x1 kernel: two output rows, every tap reads padding.
    case = Case(1, 2, 1, (0, 3), (1, 1), (1, 1), (1, 1), (1, 1))
    assert case.out == (2, 5)
    x, w = case.tensors(requires_grad=True)
    y = ops.involution2d(x, w, *case.params())
    assert y.shape == (1, 2, 2, 5) and (y == 0).all()
    gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert gx.shape == x.shape and (gw == 0).all()


def test_input_smaller_than_kernel_with_padding():
    # H = 1 with padding 3: most taps are padding; the output is still well defined.
    case = Case(2, 3, 1, (1, 2), (7, 7), (1, 1), (3, 3), (1, 1))
    x, w = case.tensors(requires_grad=True)
    y = ops.involution2d(x, w, *case.params())
    torch.testing.assert_close(y, involution2d_reference(x, w, *case.params()))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last_inputs(device):
    case = Case(2, 6, 3, (9, 11), (3, 5), (2, 1), (1, 2), (1, 2))
    x, w = case.tensors(device=device)
    expected = involution2d_reference(x, w, *case.params())
    variants = {
        "channels_last": (x.contiguous(memory_format=torch.channels_last), w),
        "transposed": (x.transpose(2, 3).contiguous().transpose(2, 3), w),
        "sliced": (torch.randn(2, 12, 9, 11, dtype=torch.float64, device=device)[:, ::2].copy_(x),
                   w),
        "weight_permuted": (x, w.permute(0, 1, 4, 5, 2, 3).contiguous().permute(0, 1, 4, 5, 2, 3)),
        "expanded_weight": (x[:1].expand(2, -1, -1, -1), w[:1].expand(2, -1, -1, -1, -1, -1)),
    }
    for name, (xv, wv) in variants.items():
        ref = (expected if name != "expanded_weight"
               else involution2d_reference(xv, wv, *case.params()))
        y = ops.involution2d(xv, wv, *case.params())
        torch.testing.assert_close(y, ref, msg=name)
        # Gradients through non-contiguous views, too.
        xv = xv.detach().requires_grad_()
        wv = wv.detach().requires_grad_()
        grad = torch.randn_like(y).transpose(2, 3).contiguous().transpose(2, 3)
        gx, gw = torch.autograd.grad(ops.involution2d(xv, wv, *case.params()), (xv, wv), grad)
        rx, rw = xv.detach().requires_grad_(), wv.detach().requires_grad_()
        rgx, rgw = torch.autograd.grad(involution2d_reference(rx, rw, *case.params()), (rx, rw),
                                       grad)
        torch.testing.assert_close(gx, rgx, msg=name)
        torch.testing.assert_close(gw, rgw, msg=name)


def test_deterministic_and_independent_of_thread_count():
    # 48 tasks of up to 8 rows: with 2 or more threads they are handed out in chunks
    # from a shared counter, so which thread computes a row varies from run to run.
    case = Case(4, 16, 4, (17, 15), (7, 7), (1, 1), (3, 3), (1, 1))
    x, w = case.tensors(dtype=torch.float32, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 2, 1):
            torch.set_num_threads(n)
            y = ops.involution2d(x, w, *case.params())
            gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
            results.append((y, gx, gw))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_functional_accepts_ints_and_pairs():
    case = Case(1, 4, 2, (8, 8), (3, 3), (2, 2), (1, 1), (1, 1))
    x, w = case.tensors()
    a = involution2d(x, w, stride=2, padding=1, dilation=1)
    b = involution2d(x, w, stride=(2, 2), padding=[1, 1], dilation=(1, 1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stride must be an int or a sequence of 2 ints"):
        involution2d(x, w, stride=(2, 2, 2))
    with pytest.raises(TypeError, match="padding must be an int"):
        involution2d(x, w, padding=1.5)


def test_bfloat16_rounding_and_special_values_match_torch():
    # The kernels narrow float32 sums to bfloat16 on the bits: the result must be what torch's
    # own conversion gives, NaN and infinities included (1x1 kernel of ones: y == x).
    x = torch.tensor([1.0, -2.5, 3.00390625, 1e-40, 65504.0, float("inf"), float("-inf"),
                      float("nan"), 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8] * 3).view(1, 1, 3, 10)
    w = torch.ones(1, 1, 1, 1, 3, 10)
    y = ops.involution2d(x.bfloat16(), w.bfloat16(), [1, 1], [0, 0], [1, 1])
    ref = x.bfloat16()
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y[~y.isnan()], ref[~ref.isnan()])
    # Sums that need rounding: 1 + 2**-8 (a tie, rounds to even) and 1 + 3 * 2**-8.
    two = torch.ones(1, 1, 1, 2, 1, 2).bfloat16()
    pair = torch.tensor([[[[1.0, 2 ** -8], [1.0, 3 * 2 ** -8]]]]).bfloat16().view(1, 1, 1, 4)
    y = ops.involution2d(pair, two, [1, 2], [0, 0], [1, 1])
    expected = (pair.float().view(1, 1, 1, 2, 2).sum(-1)).bfloat16().view(1, 1, 1, 2)
    assert torch.equal(y, expected)


def test_cpu_autocast_runs_in_bfloat16():
    case = Case(2, 8, 2, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1))
    x, w = case.tensors(dtype=torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.involution2d(x, w, *case.params())
    assert y.dtype == torch.bfloat16
    ref = involution2d_reference(x.detach().bfloat16(), w.detach().bfloat16(), *case.params())
    torch.testing.assert_close(y.double(), ref, **DTYPE_TOLERANCES[torch.bfloat16])
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    # float64 is left alone by autocast, as for conv2d.
    x64, w64 = case.tensors()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.involution2d(x64, w64, *case.params()).dtype == torch.float64


def test_autograd_node_is_the_libraries_own():
    # The CMake library registers autograd in C++; the wheel's (PyTorch's stable ABI) from
    # Python, with torch.library.register_autograd: either way the op's own backward, not a
    # decomposition's.
    x, w = Case(1, 2, 1, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)).tensors(requires_grad=True)
    y = ops.involution2d(x, w, [1, 1], [1, 1], [1, 1])
    expected = ("CppFunction" if involution._registrations.has_cpp_registrations()
                else "GeneratedBackwardFor_involution_involution2d_defaultBackward")
    assert type(y.grad_fn).__name__ == expected
    assert involution.library_path.endswith((".so", ".pyd", ".dylib"))


def large_enough(device):
    if device == "cuda":  # runs wherever the GPU has the memory
        return torch.cuda.get_device_properties(0).total_memory > 16 * 2 ** 30
    return os.environ.get("INVOLUTION_TEST_LARGE") == "1"


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_pow_31_elements(device):
    if not large_enough(device):
        pytest.skip("needs ~10 GB of memory; set INVOLUTION_TEST_LARGE=1 to run on the CPU")
    # 64-bit indexing: the input and output have 2**31 + 2**17 elements each.
    c, h, wd = 2 ** 15 + 2, 256, 256
    x = torch.ones(1, c, h, wd, dtype=torch.bfloat16, device=device)
    x[0, -1] = 2.0
    w = torch.full((1, 1, 1, 1, h, wd), 0.5, dtype=torch.bfloat16, device=device)
    y = ops.involution2d(x, w, [1, 1], [0, 0], [1, 1])
    assert y.numel() > 2 ** 31
    assert y[0, -1].float().mean().item() == 1.0 and y[0, -2].float().mean().item() == 0.5


CPU_CAPABILITIES = ["DEFAULT", "AVX2", "AVX512"]


def test_kernel_table_follows_torchs_cpu_capability():
    best = torch.backends.cpu.get_cpu_capability()
    if best not in CPU_CAPABILITIES:
        pytest.skip(f"torch reports {best}")
    assert ops._cpu_capability() == best.lower()


@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_every_cpu_instruction_set(capability):
    # The kernels are compiled once per instruction set and picked at run time from ATen's CPU
    # capability; the other tests see only this machine's best. ATEN_CPU_CAPABILITY lowers it:
    # run this file's and the 3-D file's CPU tests again under each lower capability.
    import subprocess
    import sys

    best = torch.backends.cpu.get_cpu_capability()
    if best not in CPU_CAPABILITIES or capability == best:
        pytest.skip(f"this run already tests {best}")
    if CPU_CAPABILITIES.index(capability) > CPU_CAPABILITIES.index(best):
        pytest.skip(f"this machine has {best}")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability.lower(), "CUDA_VISIBLE_DEVICES": ""}
    seen = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert seen == capability
    # The library chooses its kernel table itself (cpuid and ATEN_CPU_CAPABILITY, as torch does).
    chosen = subprocess.run(
        [sys.executable, "-c",
         "import involution, torch; print(torch.ops.involution._cpu_capability())"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert chosen == capability.lower()
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         # The kernels of each instruction set; not the graph-level tests of the fused ops.
         "not instruction_set and not more_than_2_pow_31 and not compile and not inductor"
         " and not torchscript and not modules and not module_ and not rednet",
         os.path.join(here, "test_ops.py"), os.path.join(here, "test_ops3d.py"),
         os.path.join(here, "test_fused.py")],
        env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
