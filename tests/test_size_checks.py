"""Size arithmetic that would overflow int64 is an error that says so, and None where a tensor
belongs is an error that names the argument (on every dispatch path, autocast included)."""

import pytest
import torch

import involution

ops = torch.ops.involution


# --- Overflow-checked size arithmetic -------------------------------------------------------

OVERFLOWS = [
    # (input shape, kernel, stride, padding, dilation, what the message names)
    ((1, 2, 8, 8), (1, 3), [1, 1], [2**63 - 1, 1], [1, 1], r"2 \* padding along axis H"),
    ((1, 2, 8, 8), (5, 1), [1, 1], [2, 0], [2**62, 1], r"dilated kernel size .* along axis H"),
    ((1, 2, 8, 8), (3, 3), [1, 1], [1, 2**62], [1, 1], r"2 \* padding along axis W"),
    ((1, 2, 8, 8), (3, 3), [1, 1], [1, 2**62 - 2], [1, 1], r"padded input size .* along axis W"),
    ((1, 2, 8, 8), (2**40, 3), [1, 1], [1, 1], [2**24, 1], r"dilated kernel size .* axis H"),
    ((1, 2, 3, 8, 8), (3, 1, 1), [1, 1, 1], [2**62, 0, 0], [1, 1, 1],
     r"2 \* padding along axis D"),
]


@pytest.mark.parametrize("case", OVERFLOWS, ids=lambda c: c[-1].split(" ")[-1])
def test_size_overflow_is_an_error(case):
    shape, kernel, stride, padding, dilation, message = case
    dims = len(kernel)
    x = torch.randn(*shape)
    # A weight of any output size: the check must fail on the size arithmetic first.
    w = torch.randn(1, 1, *[min(k, 3) for k in kernel], *([1] * dims))
    w = w.as_strided((1, 1, *kernel, *([1] * dims)), [0] * (2 + 2 * dims))
    op = ops.involution2d if dims == 2 else ops.involution3d
    with pytest.raises(RuntimeError, match="the size overflows: .*" + message):
        op(x, w, stride, padding, dilation)
    bw = ops._involution2d_backward_input if dims == 2 else ops._involution3d_backward_input
    gy = torch.randn(1, shape[1], *([1] * dims))
    with pytest.raises(RuntimeError, match="the size overflows"):
        bw(gy, w, list(shape[2:]), stride, padding, dilation)
    bw = ops._involution2d_backward_weight if dims == 2 else ops._involution3d_backward_weight
    with pytest.raises(RuntimeError, match="the size overflows"):
        bw(gy, x, list(kernel), 1, stride, padding, dilation)


def test_size_overflow_under_meta():
    x = torch.randn(1, 2, 8, 8, device="meta")
    w = torch.randn(1, 1, 5, 1, 1, 8, device="meta")
    with pytest.raises(RuntimeError, match="the size overflows"):
        ops.involution2d(x, w, [1, 1], [2, 0], [2**62, 1])


# --- None arguments -------------------------------------------------------------------------

X, W = torch.randn(1, 2, 5, 5), torch.randn(1, 1, 3, 3, 5, 5)
NONE_CALLS = [
    ("involution2d", "input", lambda: ops.involution2d(None, W, [1, 1], [1, 1], [1, 1])),
    ("involution2d", "weight", lambda: ops.involution2d(X, None, [1, 1], [1, 1], [1, 1])),
    ("involution3d", "input", lambda: ops.involution3d(None, W, [1] * 3, [1] * 3, [1] * 3)),
    ("involution3d", "weight", lambda: ops.involution3d(X, None, [1] * 3, [1] * 3, [1] * 3)),
    ("involution2d_backward_input", "grad_output",
     lambda: ops._involution2d_backward_input(None, W, [5, 5], [1, 1], [1, 1], [1, 1])),
    ("involution2d_backward_input", "weight",
     lambda: ops._involution2d_backward_input(X, None, [5, 5], [1, 1], [1, 1], [1, 1])),
    ("involution2d_backward_weight", "grad_output",
     lambda: ops._involution2d_backward_weight(None, X, [3, 3], 1, [1, 1], [1, 1], [1, 1])),
    ("involution2d_backward_weight", "input",
     lambda: ops._involution2d_backward_weight(X, None, [3, 3], 1, [1, 1], [1, 1], [1, 1])),
    ("involution3d_backward_input", "grad_output",
     lambda: ops._involution3d_backward_input(None, W, [5] * 3, [1] * 3, [1] * 3, [1] * 3)),
    ("involution3d_backward_weight", "input",
     lambda: ops._involution3d_backward_weight(X, None, [3] * 3, 1, [1] * 3, [1] * 3, [1] * 3)),
]


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("op,name,call", NONE_CALLS, ids=lambda v: v if isinstance(v, str) else "")
def test_none_argument_is_named(op, name, call, autocast):
    with torch.autocast("cpu", enabled=autocast):
        expected = rf"^{op}: expected {name} to be a tensor, but got None"
        with pytest.raises(RuntimeError, match=expected):
            call()


def test_none_argument_functional():
    with pytest.raises(RuntimeError, match="expected weight to be a tensor, but got None"):
        involution.functional.involution2d(X, None, padding=1)
