"""Run by `make wheel-check` with an installed wheel, from outside the source tree."""

import os

import torch

import involution
from involution.reference import involution2d_unfold

assert "site-packages" in involution.__file__, involution.__file__
print("involution", involution.__version__, "from", os.path.dirname(involution.__file__))
x = torch.randn(2, 8, 13, 11, dtype=torch.float64, requires_grad=True)
w = torch.randn(2, 2, 3, 3, 7, 6, dtype=torch.float64, requires_grad=True)
y = involution.involution2d(x, w, stride=2, padding=1)
torch.testing.assert_close(y, involution2d_unfold(x, w, (2, 2), (1, 1), (1, 1)))
assert torch.autograd.gradcheck(lambda a, b: involution.involution2d(a, b, 2, 1), (x, w))
layer = involution.Involution2d(8, 16, kernel_size=3, padding=1, groups=4)
assert layer(x.float()).shape == (2, 16, 13, 11)
print("wheel smoke test passed")
