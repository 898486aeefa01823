"""What the wheel's op library cannot register itself, registered from Python.

The wheel's library is built on PyTorch's stable ABI (one file for every torch from 2.11 on),
which registers schemas and CPU/CUDA kernels only. This module adds, for every op:

* fake kernels (torch.library.register_fake) for FakeTensor mode and meta tensors
  (torch.compile, torch.export, opcheck). With concrete sizes they run the library's own C++
  checks and shape arithmetic (``torch.ops.involution._checked_sizes``), so fake and meta
  tensors get the same errors as real ones; with symbolic sizes (dynamic shapes) they apply the
  conv output-size formula to the symbols;
* autograd: each op's derivatives are again the ops (they are contractions of one trilinear
  form), so derivatives of any order work; the fused ops save their four inputs, never the
  generated kernel, and their backward op is differentiable through the unfused ops;
* autocast on CPU and CUDA, with the policy of conv2d: inside an autocast region, float32
  operands are cast to the region's dtype and the op runs, and returns, in it.

The CMake library (full libtorch) has all of these in C++; `register()` then does nothing.
"""

from typing import List, Optional, Sequence

import torch

_NS = "involution"
_ops = torch.ops.involution
_registered = False
_cpp_registrations: Optional[bool] = None
# Keeps the Python kernels registered (a torch.library.Library unregisters them when freed).
_libraries: List[torch.library.Library] = []


def has_cpp_registrations() -> bool:
    """Whether the loaded library registered autograd/meta/autocast kernels itself (the CMake
    build) rather than needing this module's (the wheel's, on the stable ABI)."""
    global _cpp_registrations
    if _cpp_registrations is None:  # asked before register() adds Python kernels
        _cpp_registrations = torch._C._dispatch_has_kernel_for_dispatch_key(
            f"{_NS}::involution2d", "Meta")
    return _cpp_registrations


# --- fake kernels ---------------------------------------------------------------------------

def _concrete(tensors: Sequence[Optional[torch.Tensor]], ints: Sequence) -> bool:
    return all(isinstance(s, int) for t in tensors if t is not None for s in t.shape) and all(
        isinstance(i, int) for i in ints)


def _checked_sizes(op: str, tensors: Sequence[Optional[torch.Tensor]], kernel_size=(),
                   groups: int = 0, input_size=(), stride=(), padding=(), dilation=()):
    """The result sizes the C++ checks give (or their error), for concrete sizes."""
    ranks, sizes, dtypes, devices = [], [], [], []
    for t in tensors:
        ranks.append(-1 if t is None else t.dim())
        if t is not None:
            sizes.extend(int(s) for s in t.shape)
        dtypes.append(torch.float32 if t is None else t.dtype)
        devices.append("cpu" if t is None else str(t.device))
    return _ops._checked_sizes(op, ranks, sizes, dtypes, devices, list(kernel_size), groups,
                               list(input_size), list(stride), list(padding), list(dilation))


def _output_size(size, kernel, stride, padding, dilation):
    # The conv formula on (possibly symbolic) sizes; the C++ checks run on the real tensors.
    out = []
    for i, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        o = (i + 2 * p - d * (k - 1) - 1) // s + 1
        torch._check(o >= 1, lambda: "involution: output size would be < 1")
        out.append(o)
    return out


def _layout(t: torch.Tensor) -> torch.memory_format:
    # The layout the kernels give a result that follows `t` (torch's suggest_memory_format).
    return torch._prims_common.suggest_memory_format(t)


def _register_fakes(dims: int) -> None:
    n = f"{dims}d"

    @torch.library.register_fake(f"{_NS}::involution{n}")
    def _(input, weight, stride, padding, dilation):
        if _concrete((input, weight), ()):
            sizes = _checked_sizes(f"involution{n}", (input, weight), (), 0, (), stride, padding,
                                   dilation)
        else:
            kernel = weight.shape[2:2 + dims]
            sizes = [input.shape[0], input.shape[1],
                     *_output_size(input.shape[2:], kernel, stride, padding, dilation)]
        return input.new_empty(sizes)

    @torch.library.register_fake(f"{_NS}::_involution{n}_backward_input")
    def _(grad_output, weight, input_size, stride, padding, dilation):
        if _concrete((grad_output, weight), input_size):
            sizes = _checked_sizes(f"involution{n}_backward_input", (grad_output, weight), (), 0,
                                   input_size, stride, padding, dilation)
        else:
            sizes = [grad_output.shape[0], grad_output.shape[1], *input_size]
        return grad_output.new_empty(sizes)

    @torch.library.register_fake(f"{_NS}::_involution{n}_backward_weight")
    def _(grad_output, input, kernel_size, groups, stride, padding, dilation):
        if _concrete((grad_output, input), ()):
            sizes = _checked_sizes(f"involution{n}_backward_weight", (grad_output, input),
                                   kernel_size, groups, (), stride, padding, dilation)
        else:
            sizes = [input.shape[0], groups, *kernel_size, *grad_output.shape[2:]]
        return grad_output.new_empty(sizes)

    @torch.library.register_fake(f"{_NS}::fused_involution{n}")
    def _(input, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation):
        tensors = (input, reduced, span_weight, span_bias)
        if _concrete(tensors, ()):
            sizes = _checked_sizes(f"fused_involution{n}", tensors, kernel_size, 0, (), stride,
                                   padding, dilation)
        else:
            sizes = [input.shape[0], input.shape[1],
                     *_output_size(input.shape[2:], kernel_size, stride, padding, dilation)]
        return input.new_empty(sizes).contiguous(memory_format=_layout(input))

    @torch.library.register_fake(f"{_NS}::_fused_involution{n}_backward")
    def _(grad_output, input, reduced, span_weight, span_bias, kernel_size, stride, padding,
          dilation, output_mask):
        tensors = (grad_output, input, reduced, span_weight, span_bias)
        if _concrete(tensors, ()):
            _checked_sizes(f"fused_involution{n}_backward", tensors, kernel_size, 0, (), stride,
                           padding, dilation)

        def like(t):
            return t.new_empty(t.shape).contiguous(memory_format=_layout(t))

        none = input.new_empty(0)
        return (like(input) if output_mask[0] else none,
                like(reduced) if output_mask[1] else none.clone(),
                input.new_empty(span_weight.shape) if output_mask[2] else none.clone(),
                input.new_empty(span_bias.shape) if output_mask[3] and span_bias is not None
                else none.clone())


# --- autograd -------------------------------------------------------------------------------
# Y = F(X, W) is bilinear, so with T(X, W, dY) = <F(X, W), dY> the three ops are contractions
# of one trilinear form:
#   forward          F(X, W)    -> Y
#   backward_input   GI(dY, W)  -> dX   with <GI(dY, W), A> = T(A, W, dY)
#   backward_weight  GW(dY, X)  -> dW   with <GW(dY, X), B> = T(X, B, dY)
# and the derivatives of each are again these ops:
#   d<GI(dY, W), A>: wrt dY = F(A, W),  wrt W = GW(dY, A)
#   d<GW(dY, X), B>: wrt dY = F(X, B),  wrt X = GI(dY, B)

def _check_defined(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is None:
            raise RuntimeError(f"{op}: expected {name} to be a tensor, but got None "
                               "(an undefined tensor)")


def _weight_geometry(weight: torch.Tensor, dims: int):
    # Kernel size and groups of a weight (B, G, K..., O...): constants of a layer (guarded on
    # under torch.compile, as they specialise the kernels).
    return [int(k) for k in weight.shape[2:2 + dims]], int(weight.shape[1])


def _register_autograd(dims: int) -> None:
    n = f"{dims}d"
    forward = getattr(_ops, f"involution{n}").default
    backward_input = getattr(_ops, f"_involution{n}_backward_input").default
    backward_weight = getattr(_ops, f"_involution{n}_backward_weight").default

    def save_window(ctx, stride, padding, dilation):
        ctx.window = (list(stride), list(padding), list(dilation))

    def forward_setup(ctx, inputs, output):
        input, weight, stride, padding, dilation = inputs
        ctx.save_for_backward(input, weight)
        save_window(ctx, stride, padding, dilation)

    def forward_backward(ctx, grad):
        input, weight = ctx.saved_tensors
        gx = gw = None
        if grad is not None:
            if ctx.needs_input_grad[0]:
                gx = backward_input(grad, weight, list(input.shape[2:]), *ctx.window)
            if ctx.needs_input_grad[1]:
                kernel, groups = _weight_geometry(weight, dims)
                gw = backward_weight(grad, input, kernel, groups, *ctx.window)
        return gx, gw, None, None, None

    torch.library.register_autograd(f"{_NS}::involution{n}", forward_backward,
                                    setup_context=forward_setup)

    def backward_input_setup(ctx, inputs, output):
        grad_output, weight, input_size, stride, padding, dilation = inputs
        ctx.save_for_backward(grad_output, weight)
        save_window(ctx, stride, padding, dilation)

    def backward_input_backward(ctx, a):
        grad_output, weight = ctx.saved_tensors
        d_grad_output = d_weight = None
        if a is not None:
            if ctx.needs_input_grad[0]:
                d_grad_output = forward(a, weight, *ctx.window)
            if ctx.needs_input_grad[1]:
                kernel, groups = _weight_geometry(weight, dims)
                d_weight = backward_weight(grad_output, a, kernel, groups, *ctx.window)
        return d_grad_output, d_weight, None, None, None, None

    torch.library.register_autograd(f"{_NS}::_involution{n}_backward_input",
                                    backward_input_backward, setup_context=backward_input_setup)

    def backward_weight_setup(ctx, inputs, output):
        grad_output, input, kernel_size, groups, stride, padding, dilation = inputs
        ctx.save_for_backward(grad_output, input)
        save_window(ctx, stride, padding, dilation)

    def backward_weight_backward(ctx, b):
        grad_output, input = ctx.saved_tensors
        d_grad_output = d_input = None
        if b is not None:
            if ctx.needs_input_grad[0]:
                d_grad_output = forward(input, b, *ctx.window)
            if ctx.needs_input_grad[1]:
                d_input = backward_input(grad_output, b, list(input.shape[2:]), *ctx.window)
        return d_grad_output, d_input, None, None, None, None, None

    torch.library.register_autograd(f"{_NS}::_involution{n}_backward_weight",
                                    backward_weight_backward, setup_context=backward_weight_setup)


def _register_fused_autograd(dims: int, library: torch.library.Library) -> None:
    n = f"{dims}d"
    fused_backward = getattr(_ops, f"_fused_involution{n}_backward").default
    backward_input = getattr(_ops, f"_involution{n}_backward_input").default
    backward_weight = getattr(_ops, f"_involution{n}_backward_weight").default

    def setup(ctx, inputs, output):
        input, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation = inputs
        # Only the four inputs: the generated kernel is recomputed by the backward op.
        ctx.save_for_backward(input, reduced, span_weight, span_bias)
        ctx.params = (list(kernel_size), list(stride), list(padding), list(dilation))

    def backward(ctx, grad):
        input, reduced, span_weight, span_bias = ctx.saved_tensors
        if grad is None:
            return (None,) * 8
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2],
                span_bias is not None and ctx.needs_input_grad[3]]
        gx, gz, gs, gb = fused_backward(grad, input, reduced, span_weight, span_bias,
                                        *ctx.params, mask)
        return (gx if mask[0] else None, gz if mask[1] else None, gs if mask[2] else None,
                gb if mask[3] else None, None, None, None, None)

    torch.library.register_autograd(f"{_NS}::fused_involution{n}", backward, setup_context=setup)

    # The backward op: the fused kernels, or, while a graph is recorded (double backward), the
    # composite the fused op equals, out of ops that have derivatives of their own:
    #   W  = span_weight . reduced + span_bias (the 1x1 convolution) viewed as (B, G, K..., O...)
    #   dX = backward_input(dY, W),  dW = backward_weight(dY, X)
    #   d(reduced, span_weight, span_bias) = the 1x1 convolution's gradients for dW.
    op_name = f"fused_involution{n}_backward"

    def backward_op_autograd(grad_output, input, reduced, span_weight, span_bias, kernel_size,
                             stride, padding, dilation, output_mask):
        _check_defined(op_name, grad_output=grad_output, input=input, reduced=reduced,
                       span_weight=span_weight)
        tensors = (grad_output, input, reduced, span_weight, span_bias)
        recording = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors)
        if not recording:
            with torch._C._AutoDispatchBelowAutograd():
                return fused_backward(grad_output, input, reduced, span_weight, span_bias,
                                      kernel_size, stride, padding, dilation, output_mask)
        taps = 1
        for k in kernel_size:
            taps *= k
        groups = span_weight.shape[0] // taps
        # The 1x1 convolution as products over the flattened pixels P, so that every derivative
        # of it is again a product (no convolution double backward, which torch 2.11 cannot
        # trace with symbolic sizes).
        batch, r = reduced.shape[0], reduced.shape[1]
        z = reduced.reshape(batch, r, -1)
        s = span_weight.reshape(span_weight.shape[0], r)
        kernel_flat = torch.einsum("kr,brp->bkp", s, z)
        if span_bias is not None:
            kernel_flat = kernel_flat + span_bias.view(1, -1, 1)
        W = kernel_flat.reshape(batch, groups, *kernel_size, *reduced.shape[2:])
        none = input.new_empty(0)
        gx, gz, gs, gb = none, none.clone(), none.clone(), none.clone()
        if output_mask[0]:
            gx = backward_input(grad_output, W, list(input.shape[2:]), stride, padding, dilation)
        wants_bias = output_mask[3] and span_bias is not None
        if output_mask[1] or output_mask[2] or wants_bias:
            dW = backward_weight(grad_output, input, list(kernel_size), int(groups), stride,
                                 padding, dilation).reshape(kernel_flat.shape)
            if output_mask[1]:
                gz = torch.einsum("kr,bkp->brp", s, dW).reshape(reduced.shape)
            if output_mask[2]:
                gs = torch.einsum("bkp,brp->kr", dW, z).reshape(span_weight.shape)
            if wants_bias:
                gb = dW.sum((0, 2))
        return gx, gz, gs, gb

    library.impl(f"_fused_involution{n}_backward", backward_op_autograd, "Autograd")


# --- autocast -------------------------------------------------------------------------------

def _register_autocast(library: torch.library.Library) -> None:
    for device_type, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
        keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def cast(t, dtype, device_type=device_type):
            if t is None or not t.is_floating_point() or t.dtype == torch.float64 or \
                    t.device.type != device_type:
                return t
            return t.to(dtype)

        def make(op_name, fused, device_type=device_type, keyset=keyset, cast=cast):
            op = getattr(_ops, op_name).default

            def kernel(*args):
                tensors = args[:4] if fused else args[:2]
                names = ("input", "reduced", "span_weight") if fused else ("input", "weight")
                _check_defined(op_name, **dict(zip(names, tensors)))
                dtype = torch.get_autocast_dtype(device_type)
                with torch._C._ExcludeDispatchKeyGuard(keyset):
                    return op(*(cast(t, dtype) for t in tensors), *args[len(tensors):])

            return kernel

        for dims in (2, 3):
            library.impl(f"involution{dims}d", make(f"involution{dims}d", False), key)
            library.impl(f"fused_involution{dims}d", make(f"fused_involution{dims}d", True), key)


def register() -> None:
    """Registers the fake, autograd and autocast kernels the loaded library lacks (once)."""
    global _registered
    if _registered or has_cpp_registrations():
        return
    library = torch.library.Library(_NS, "IMPL")
    _libraries.append(library)
    for dims in (2, 3):
        _register_fakes(dims)
        _register_autograd(dims)
        _register_fused_autograd(dims, library)
    _register_autocast(library)
    _registered = True
