"""Bad input gets a clear error from the C++ checks, naming what was expected and what came."""

import pytest
import torch

import involution  # noqa: F401  (loads the ops)

ops = torch.ops.involution
P = ([1, 1], [1, 1], [1, 1])


def good():
    return torch.randn(2, 4, 7, 7), torch.randn(2, 2, 3, 3, 7, 7)


BAD_FORWARD = [
    ("input 3-D", lambda x, w: (x[0], w, *P),
     r"expected input to be a 4-D tensor \(B, C, H, W\), "
     r"but got a 3-D tensor of shape \[4, 7, 7\]"),
    ("weight 5-D", lambda x, w: (x, w[:, 0], *P),
     r"expected weight to be a 6-D tensor \(B, G, KH, KW, OH, OW\), but got a 5-D tensor"),
    ("batch mismatch", lambda x, w: (x, w[:1], *P),
     r"same batch size, but got weight.size\(0\) = 1 and input.size\(0\) = 2"),
    ("channels not divisible", lambda x, w: (x[:, :3], w, *P),
     r"number of channels \(3\) to be divisible by the number of groups \(2"),
    ("zero groups", lambda x, w: (x, w[:, :0], *P), r"expected at least 1 group, but got 0"),
    ("weight output size", lambda x, w: (x, w[..., :6, :], *P),
     r"weight's output size \[6, 7\] does not match the output size \[7, 7\] given by input "
     r"size \[7, 7\], kernel size \[3, 3\], stride \[1, 1\], padding \[1, 1\]"),
    ("stride-2 output size", lambda x, w: (x, w, [2, 2], [1, 1], [1, 1]),
     r"weight's output size \[7, 7\] does not match the output size \[4, 4\]"),
    ("dtype mismatch", lambda x, w: (x, w.double(), *P),
     r"expected input and weight to have the same dtype, but got input Float and weight Double"),
    ("integer input", lambda x, w: (x.long(), w.long(), *P),
     r"expected input to have a floating-point dtype \(float64, float32, float16 or bfloat16\), "
     r"but got Long"),
    ("complex input", lambda x, w: (x.to(torch.complex64), w.to(torch.complex64), *P),
     r"floating-point dtype .* but got ComplexFloat"),
    ("stride 0", lambda x, w: (x, w, [0, 1], [1, 1], [1, 1]),
     r"expected stride >= 1 on every axis, but got stride \[0, 1\]"),
    ("dilation 0", lambda x, w: (x, w, [1, 1], [1, 1], [1, 0]),
     r"expected dilation >= 1 on every axis, but got dilation \[1, 0\]"),
    ("negative padding", lambda x, w: (x, w, [1, 1], [-1, 1], [1, 1]),
     r"expected padding >= 0 on every axis, but got padding \[-1, 1\]"),
    ("stride of 3 elements", lambda x, w: (x, w, [1, 1, 1], [1, 1], [1, 1]),
     r"expected stride to have 2 elements \(one per spatial axis\), but got 3"),
    ("kernel larger than input", lambda x, w: (x[..., :2, :2], torch.randn(2, 2, 5, 5, 1, 1),
                                               [1, 1], [0, 0], [1, 1]),
     r"the dilated kernel \(size \[5, 5\], dilation \[1, 1\]\) is larger than the padded input "
     r"\(size \[2, 2\], padding \[0, 0\]\) along axis H"),
    ("zero kernel", lambda x, w: (x, torch.randn(2, 2, 0, 3, 9, 7), *P),
     r"expected a kernel size >= 1 on every axis, but got \[0, 3\]"),
    # Sparse tensors never reach the kernels: the dispatcher names the unsupported backend.
    ("sparse input", lambda x, w: (x.to_sparse(), w, *P),
     r"Could not run 'involution::involution2d' with arguments from the 'SparseCPU' backend"),
]


@pytest.mark.parametrize("make_args,message", [c[1:] for c in BAD_FORWARD],
                         ids=[c[0] for c in BAD_FORWARD])
def test_forward_rejects(make_args, message):
    x, w = good()
    with pytest.raises(RuntimeError, match=message):
        ops.involution2d(*make_args(x, w))


@pytest.mark.parametrize("make_args,message", [c[1:] for c in BAD_FORWARD[:13]],
                         ids=[c[0] for c in BAD_FORWARD[:13]])
def test_meta_kernel_rejects_the_same(make_args, message):
    x, w = good()
    args = make_args(x, w)
    args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(RuntimeError, match=message):
        ops.involution2d(*args)


def test_device_mismatch():
    x, w = good()
    with pytest.raises(RuntimeError, match=r"expected input and weight to be on the same device, "
                                           r"but got input on meta and weight on cpu"):
        ops.involution2d(x.to("meta"), w, *P)


def test_backward_input_rejects():
    gy, w = torch.randn(2, 4, 7, 7), torch.randn(2, 2, 3, 3, 7, 7)
    with pytest.raises(RuntimeError, match=r"expected input_size to have 2 elements"):
        ops._involution2d_backward_input(gy, w, [7, 7, 7], *P)
    with pytest.raises(RuntimeError, match=r"weight's output size \[7, 7\] does not match the "
                                           r"output size \[8, 7\] given by input size \[8, 7\]"):
        ops._involution2d_backward_input(gy, w, [8, 7], *P)
    with pytest.raises(RuntimeError, match=r"grad_output's spatial size \[6, 7\] does not match"):
        ops._involution2d_backward_input(gy[:, :, :6], w, [7, 7], *P)
    with pytest.raises(RuntimeError, match=r"expected grad_output to be a 4-D tensor "
                                           r"\(B, C, OH, OW\)"):
        ops._involution2d_backward_input(gy[0], w, [7, 7], *P)
    with pytest.raises(RuntimeError, match=r"expected input_size >= 0"):
        ops._involution2d_backward_input(gy, w, [-1, 7], *P)


def test_backward_weight_rejects():
    gy, x = torch.randn(2, 4, 7, 7), torch.randn(2, 4, 7, 7)
    with pytest.raises(RuntimeError, match=r"divisible by the number of groups \(3, groups\)"):
        ops._involution2d_backward_weight(gy, x, [3, 3], 3, *P)
    with pytest.raises(RuntimeError, match=r"expected at least 1 group, but got 0"):
        ops._involution2d_backward_weight(gy, x, [3, 3], 0, *P)
    with pytest.raises(RuntimeError, match=r"same batch size and channels"):
        ops._involution2d_backward_weight(gy[:, :2], x, [3, 3], 2, *P)
    with pytest.raises(RuntimeError, match=r"grad_output's spatial size \[7, 7\] does not match "
                                           r"the output size \[5, 5\]"):
        ops._involution2d_backward_weight(gy, x, [5, 5], 2, *P)
    with pytest.raises(RuntimeError, match=r"expected kernel_size to have 2 elements"):
        ops._involution2d_backward_weight(gy, x, [3], 2, *P)
    with pytest.raises(RuntimeError, match=r"same dtype"):
        ops._involution2d_backward_weight(gy, x.double(), [3, 3], 2, *P)
