"""Smoke test of an installed wheel, run from outside the source tree (`make wheel-check`,
`make wheel-matrix`): the one wheel file, built once, must work with every supported torch.

Checks: the import; opcheck of every op; gradcheck and gradgradcheck of the ops; a module's
training step; torch.compile (inductor, dynamic shapes); autocast; the C++ checks' message for
bad input, unchanged; and, for the stable-ABI build, that the library needs no libtorch
symbol outside the stable C shims.
"""

import os
import subprocess
import sys

import torch

import involution
from involution.reference import involution2d_unfold

assert "site-packages" in involution.__file__, involution.__file__
print(f"involution {involution.__version__} from {os.path.dirname(involution.__file__)} "
      f"with torch {torch.__version__}")
ops = torch.ops.involution
D = dict(dtype=torch.float64)

# Values against the reference, gradcheck and gradgradcheck.
x = torch.randn(2, 8, 13, 11, **D, requires_grad=True)
w = torch.randn(2, 2, 3, 3, 7, 6, **D, requires_grad=True)
y = involution.involution2d(x, w, stride=2, padding=1)
torch.testing.assert_close(y, involution2d_unfold(x, w, (2, 2), (1, 1), (1, 1)))
assert torch.autograd.gradcheck(lambda a, b: involution.involution2d(a, b, 2, 1), (x, w))
assert torch.autograd.gradgradcheck(lambda a, b: involution.involution2d(a, b, 2, 1), (x, w))
z = torch.randn(2, 3, 7, 6, **D, requires_grad=True)
s = torch.randn(2 * 9, 3, 1, 1, **D, requires_grad=True)
b = torch.randn(2 * 9, **D, requires_grad=True)


def fused(x, z, s, b):
    return involution.fused_involution2d(x, z, s, b, kernel_size=3, stride=2, padding=1)


assert torch.autograd.gradcheck(fused, (x, z, s, b))
assert torch.autograd.gradgradcheck(fused, (x, z, s, b))
print("values, gradcheck, gradgradcheck: ok")

# opcheck of every op (schema, fake kernel, autograd registration, dispatch).
x3 = torch.randn(1, 4, 5, 6, 5, **D, requires_grad=True)
w3 = torch.randn(1, 2, 3, 3, 3, 5, 6, 5, **D, requires_grad=True)
window2, window3 = ([2, 2], [1, 1], [1, 1]), ([1] * 3, [1] * 3, [1] * 3)
gy = torch.randn(2, 8, 7, 6, **D)
gy3 = torch.randn(1, 4, 5, 6, 5, **D)
z3 = torch.randn(1, 3, 5, 6, 5, **D, requires_grad=True)
s3 = torch.randn(2 * 27, 3, 1, 1, 1, **D, requires_grad=True)
calls = [
    (ops.involution2d.default, (x, w, *window2)),
    (ops._involution2d_backward_input.default, (gy, w, [13, 11], *window2)),
    (ops._involution2d_backward_weight.default, (gy, x, [3, 3], 2, *window2)),
    (ops.involution3d.default, (x3, w3, *window3)),
    (ops._involution3d_backward_input.default, (gy3, w3, [5, 6, 5], *window3)),
    (ops._involution3d_backward_weight.default, (gy3, x3, [3, 3, 3], 2, *window3)),
    (ops.fused_involution2d.default, (x, z, s, b, [3, 3], *window2)),
    (ops._fused_involution2d_backward.default,
     (gy, x, z, s, b, [3, 3], *window2, [True, True, True, True])),
    (ops.fused_involution3d.default, (x3, z3, s3, None, [3, 3, 3], *window3)),
    (ops._fused_involution3d_backward.default,
     (gy3, x3, z3, s3, None, [3, 3, 3], *window3, [True, True, True, False])),
]
for op, args in calls:
    torch.library.opcheck(op, args)
print(f"opcheck of {len(calls)} ops: ok")

# A module's training step, eager and under torch.compile (dynamic shapes), and autocast.
torch.manual_seed(0)
layer = involution.Involution2d(8, 8, kernel_size=3, padding=1, groups=2)
optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
loss = layer(torch.randn(2, 8, 12, 12)).square().mean()
loss.backward()
optimizer.step()
assert all(p.grad is not None for p in layer.parameters())
compiled = torch.compile(layer, dynamic=True, fullgraph=True)
for size in (12, 15):
    inp = torch.randn(2, 8, size, size, requires_grad=True)
    torch.testing.assert_close(compiled(inp), layer(inp), rtol=1e-4, atol=1e-4)
    compiled(inp).sum().backward()
with torch.autocast("cpu", dtype=torch.bfloat16):
    assert layer(torch.randn(2, 8, 12, 12)).dtype == torch.bfloat16
print("training step, torch.compile, autocast: ok")

# The C++ checks' message reaches Python unchanged.
try:
    ops.involution2d(torch.randn(2, 4, 7, 7), torch.randn(1, 2, 3, 3, 7, 7), [1, 1], [1, 1],
                     [1, 1])
except RuntimeError as e:
    expected = ("involution2d: expected weight and input to have the same batch size, but got "
                "weight.size(0) = 1 and input.size(0) = 2")
    assert str(e).splitlines()[0] == expected, str(e)
else:
    raise AssertionError("no error for a batch mismatch")
print("bad input message: ok")

# The stable-ABI library needs no libtorch symbol outside the stable C shims.
from involution.version import stable_abi  # noqa: E402

if stable_abi:
    out = subprocess.run(["nm", "-DC", "--undefined-only", involution.library_path],
                         capture_output=True, text=True, check=True).stdout
    bad = [line for line in out.splitlines()
           if any(ns in line for ns in ("c10::", "at::", "torch::"))]
    assert not bad, "symbols outside the stable ABI:\n" + "\n".join(bad)
    print("nm: no c10::, at:: or torch:: symbol")
print("wheel smoke test passed", file=sys.stdout)
