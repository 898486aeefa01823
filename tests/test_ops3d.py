"""involution3d: the op family against the float64 reference, its checks, compile/export, and the
Involution3d module (the seed's constructor, with the seed's 3-D defects fixed)."""

import pytest
import torch
import torch.nn as nn
from helpers import (
    DEVICES,
    Case,
    Case3d,
    involution3d_reference,
    random_cases_3d,
)

import involution
from involution.functional import involution3d

ops = torch.ops.involution
CASES = random_cases_3d(16, seed=3)


def case_id(case):
    fmt = lambda t: "x".join(map(str, t))  # noqa: E731
    return (f"B{case.batch}C{case.channels}G{case.groups}_{fmt(case.size)}_k{fmt(case.kernel)}"
            f"_s{fmt(case.stride)}_p{fmt(case.padding)}_d{fmt(case.dilation)}")


def test_reference_matches_the_formula_elementwise():
    case = Case3d(1, 2, 2, (3, 4, 5), (2, 1, 3), (1, 2, 2), (1, 0, 1), (2, 1, 1))
    x, w = case.tensors()
    ref = involution3d_reference(x, w, *case.params())
    od, oh, ow = case.out
    for c in range(2):
        for i in range(od):
            for j in range(oh):
                for k in range(ow):
                    total = 0.0
                    for t in range(2):
                        for u in range(1):
                            for v in range(3):
                                a, b, e = i - 1 + 2 * t, j * 2 + u, k * 2 - 1 + v
                                if 0 <= a < 3 and 0 <= b < 4 and 0 <= e < 5:
                                    total += (w[0, c, t, u, v, i, j, k].item()
                                              * x[0, c, a, b, e].item())
                    assert abs(ref[0, c, i, j, k].item() - total) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_gradients_match_reference(case, device):
    x, w = case.tensors(requires_grad=True, device=device)
    y = ops.involution3d(x, w, *case.params())
    rx, rw = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = involution3d_reference(rx, rw, *case.params())
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    rgx, rgw = torch.autograd.grad(ref, (rx, rw), grad)
    torch.testing.assert_close(gx, rgx, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gw, rgw, atol=1e-12, rtol=1e-12)


def test_depth_one_equals_involution2d():
    case = Case(2, 6, 3, (9, 8), (3, 5), (2, 1), (1, 2), (1, 2))
    x, w = case.tensors()
    y2 = ops.involution2d(x, w, *case.params())
    s, p, d = case.params()
    y3 = ops.involution3d(x.unsqueeze(2), w.unsqueeze(2).unsqueeze(5), [1] + s, [0] + p, [1] + d)
    torch.testing.assert_close(y3.squeeze(2), y2, atol=0, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2),
                                       (torch.float16, 2e-3)], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes(dtype, tol, device):
    for case in CASES[:4]:
        x64, w64 = case.tensors(device=device)
        x, w = x64.to(dtype), w64.to(dtype)
        y = ops.involution3d(x, w, *case.params())
        assert y.dtype == dtype
        ref = involution3d_reference(x.double(), w.double(), *case.params())
        torch.testing.assert_close(y.double(), ref, atol=tol * 4, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES[:3], ids=case_id)
def test_gradcheck_and_gradgradcheck(case, device):
    x, w = case.tensors(requires_grad=True, device=device)
    fn = lambda a, b: ops.involution3d(a, b, *case.params())  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def opcheck_samples():
    samples = []
    for case in random_cases_3d(2, seed=4, max_size=5):
        for requires_grad in (False, True):
            x, w = case.tensors(requires_grad=requires_grad)
            gy = torch.randn(case.batch, case.channels, *case.out, dtype=torch.float64,
                             requires_grad=requires_grad)
            s, p, d = case.params()
            samples += [
                (ops.involution3d.default, (x, w, s, p, d)),
                (ops._involution3d_backward_input.default, (gy, w, list(case.size), s, p, d)),
                (ops._involution3d_backward_weight.default,
                 (gy, x, list(case.kernel), case.groups, s, p, d)),
            ]
    return samples


@pytest.mark.parametrize("op,args", opcheck_samples(),
                         ids=lambda v: str(v) if isinstance(v, torch._ops.OpOverload) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_zero_and_non_contiguous_inputs(device):
    case = Case3d(0, 4, 2, (3, 5, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    x, w = case.tensors(requires_grad=True, device=device)
    y = ops.involution3d(x, w, *case.params())
    assert y.shape == (0, 4, 3, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape

    case = Case3d(2, 6, 3, (4, 7, 6), (3, 1, 3), (1, 2, 1), (1, 0, 2), (1, 1, 2))
    x, w = case.tensors(device=device)
    expected = involution3d_reference(x, w, *case.params())
    for xv in (x.contiguous(memory_format=torch.channels_last_3d),
               x.transpose(3, 4).contiguous().transpose(3, 4),
               torch.zeros(2, 12, 4, 7, 6, dtype=torch.float64, device=device)[:, ::2].copy_(x)):
        torch.testing.assert_close(ops.involution3d(xv, w, *case.params()), expected)


def test_functional_accepts_ints_and_triples():
    case = Case3d(1, 2, 1, (5, 5, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
    x, w = case.tensors()
    assert torch.equal(involution3d(x, w, 2, 1, 1), involution3d(x, w, (2, 2, 2), [1, 1, 1]))
    with pytest.raises(ValueError, match="stride must be an int or a sequence of 3 ints"):
        involution3d(x, w, stride=(2, 2))


@pytest.mark.parametrize("make_args,message", [
    (lambda x, w: (x[0], w), r"expected input to be a 5-D tensor \(B, C, D, H, W\), but got a 4-D"),
    (lambda x, w: (x, w[..., 0]),
     r"expected weight to be a 8-D tensor \(B, G, KD, KH, KW, OD, OH, OW\), but got a 7-D"),
    (lambda x, w: (x, w.repeat(1, 1, 1, 1, 1, 1, 1, 2)),
     r"weight's output size \[3, 3, 6\] does not match the output size \[3, 3, 3\]"),
    (lambda x, w: (x, w.repeat(1, 3, 1, 1, 1, 1, 1, 1)),
     r"number of channels \(4\) to be divisible by the number of groups \(6"),
])
def test_errors_name_what_was_expected(make_args, message):
    case = Case3d(1, 4, 2, (5, 5, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
    x, w = make_args(*case.tensors())
    with pytest.raises(RuntimeError, match=message):
        ops.involution3d(x, w, *case.params())
    with pytest.raises(RuntimeError, match=r"expected stride to have 3 elements"):
        ops.involution3d(*case.tensors(), [2, 2], [1, 1, 1], [1, 1, 1])


def test_compile_fullgraph_and_export():
    case = Case3d(2, 4, 2, (5, 6, 7), (3, 3, 3), (1, 2, 1), (1, 1, 1), (1, 1, 1))
    x, w = case.tensors(dtype=torch.float32, requires_grad=True)

    def loss(a, b):
        return (involution3d(a, b, case.stride, case.padding, case.dilation) ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    gx, gw = torch.autograd.grad(compiled(x, w), (x, w))
    rx, rw = torch.autograd.grad(loss(x, w), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)

    module = involution.Involution3d(4, 4, kernel_size=3, padding=1, groups=2).eval()
    inp = torch.randn(2, 4, 5, 6, 7)
    exported = torch.export.export(module, (inp,))
    torch.testing.assert_close(exported.module()(inp), module(inp))


class SeedLayoutInvolution3d(nn.Module):
    """The seed's Involution3d submodules (its state_dict layout), computed the correct way."""

    def __init__(self, cin, cout, kernel, stride, groups, reduce_ratio, dilation, padding):
        super().__init__()
        reduced = cout // reduce_ratio
        self.kernel, self.stride, self.dilation, self.padding = kernel, stride, dilation, padding
        self.groups = groups
        self.sigma_mapping = nn.Sequential(nn.BatchNorm3d(reduced, momentum=0.3), nn.ReLU())
        self.initial_mapping = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        self.o_mapping = nn.AvgPool3d(stride, stride)
        self.reduce_mapping = nn.Conv3d(cin, reduced, 1)
        self.span_mapping = nn.Conv3d(reduced, kernel[0] * kernel[1] * kernel[2] * groups, 1)

    def forward(self, x):
        k = self.span_mapping(self.sigma_mapping(self.reduce_mapping(self.o_mapping(x))))
        k = k.view(x.shape[0], self.groups, *self.kernel, *k.shape[2:])
        return involution3d_reference(self.initial_mapping(x), k, self.stride, self.padding,
                                      self.dilation)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_module_loads_seed_state_dict_and_is_correct(train):
    torch.manual_seed(0)
    config = dict(kernel=(3, 5, 3), stride=(2, 2, 2), groups=2, reduce_ratio=2,
                  dilation=(1, 1, 2), padding=(1, 2, 2))
    seed = SeedLayoutInvolution3d(4, 8, **config).double()
    ours = involution.Involution3d(
        4, 8, kernel_size=config["kernel"], stride=config["stride"], groups=2, reduce_ratio=2,
        dilation=config["dilation"], padding=config["padding"], bias=True).double()
    with torch.no_grad():
        for bn in (seed.sigma_mapping[0],):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    ours.load_state_dict(seed.state_dict(), strict=True)
    seed.train(train)
    ours.train(train)
    x = torch.randn(2, 4, 6, 8, 10, dtype=torch.float64)
    torch.testing.assert_close(ours(x), seed(x))


def test_module_odd_sizes_defaults_and_repr():
    m = involution.Involution3d(4, 4, kernel_size=3, stride=2, padding=1, groups=2)
    y = m(torch.randn(1, 4, 5, 7, 9))  # odd sizes with stride 2: ceil-mode pooling
    assert y.shape == (1, 4, 3, 4, 5)
    d = involution.Involution3d(2, 2)
    assert (d.kernel_size, d.stride, d.padding, d.dilation) == ((7,) * 3, (1,) * 3, (3,) * 3,
                                                              (1,) * 3)
    assert isinstance(d.sigma_mapping[0], nn.BatchNorm3d) and d.sigma_mapping[0].momentum == 0.3
    assert "kernel_size=(7, 7, 7)" in repr(d) and "reduce_ratio=1" in repr(d)
    with pytest.raises(ValueError, match="expected a 5-D input"):
        m(torch.randn(1, 4, 5, 5))
    with pytest.warns(UserWarning, match="kernel_Size"):
        involution.Involution3d(2, 2, kernel_Size=3)


def test_module_torchscript_and_training_step():
    m = involution.Involution3d(4, 8, kernel_size=(3, 3, 1), stride=(1, 2, 2),
                                padding=(1, 1, 0), groups=4, reduce_ratio=2)
    x = torch.randn(2, 4, 4, 6, 6)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x))
    m(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    # The adaptive path, as in 2-D: non-"same" padding.
    assert involution.Involution3d(2, 2, kernel_size=3, padding=0)(
        torch.randn(1, 2, 5, 5, 5)).shape == (1, 2, 3, 3, 3)
