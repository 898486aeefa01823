"""ONNX export of models that use the involution ops, with standard ONNX operators only.

    import involution.onnx
    program = involution.onnx.export(model.eval(), (x,), dynamic_shapes=({0: "batch"},))
    program.save("model.onnx")          # runs in onnxruntime, no custom-op library needed

``export`` is ``torch.onnx.export(..., dynamo=True)`` with this module's translations added;
``custom_translation_table`` is the dict to pass to ``torch.onnx.export`` yourself. What each op
becomes:

* ``involution2d`` at opset >= 19 (the exporter's default is 20), float16/32/64: one standard
  ``DeformConv`` node. With zero offsets, an all-ones depthwise weight ``(C, 1, KH, KW)``,
  ``group = C`` and ``offset_group = G``, DeformConv's mask is the involution kernel:
  ``mask = weight.reshape(B, G*KH*KW, OH, OW)``. Stride, padding and dilation are attributes;
  batch and spatial sizes may be symbolic. The runtime still samples each tap bilinearly (at
  integer positions) and reads an offset tensor of zeros twice the kernel's size.
* ``fused_involution2d`` and ``fused_involution3d``: the span convolution as a standard 1x1
  ``Conv`` (in float32 for bfloat16), reshaped to the kernel, then as the unfused op below.
* ``involution3d`` (DeformConv is 2-D only), ``involution2d`` below opset 19 and bfloat16: a
  decomposition into standard ops: one ``Pad``, then per tap a strided ``Slice`` of the input, a
  ``Slice`` of the kernel, a ``Mul`` and an ``Add`` (KD*KH*KW taps: 4 nodes and one
  output-sized temporary each, so it costs about KD*KH*KW passes over the output). float16 and
  bfloat16 accumulate in float32, as the op does.

In onnxruntime's CPU provider both were 12-46 times slower than the op's forward on RedNet-50's
shapes (batch 8, one thread; README, "Deploying"); ``python benchmarks/run.py --onnxruntime``
in a checkout measures it.

Channel count, group count and kernel size must be static (they are in any model whose convs
fix them); anything the translation cannot express raises a ``ValueError`` that names it.

Importing this module needs neither onnx nor onnxscript (they are imported when a model is
exported); it registers the same translations with the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``, opsets 11 to 20), which ``import involution`` does too.
"""

import itertools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["DEFORM_CONV_OPSET", "custom_translation_table", "export"]

#: The first opset with the standard DeformConv, which 2-D involution exports to.
DEFORM_CONV_OPSET = 19
# DeformConv-19 takes these element types (bfloat16 comes in opset 22; runtimes lag behind).
_DEFORM_CONV_DTYPES = (torch.float16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
# Slice with steps (opset 10) and Pad with its pads as an input (opset 11).
_TORCHSCRIPT_MIN_OPSET = 11


# ------------------------------------------------------------------------------ graph builders
# The translation is written once against a small builder interface, implemented for onnxscript
# (the dynamo exporter) and for the TorchScript exporter's graph context.


class _Builder:
    opset: int
    dtype: torch.dtype  # the element type of the op's input and weight

    def op(self, name: str, *inputs, **attributes):  # one ONNX node, its (single) output
        raise NotImplementedError

    def ints(self, values: Sequence[int]):  # a 1-D int64 constant
        raise NotImplementedError

    def full(self, shape: Sequence[int], fill: float):  # a constant of the op's dtype
        raise NotImplementedError

    def zeros(self, shape):  # zeros of the op's dtype, shape given by a 1-D int64 value
        raise NotImplementedError

    def cast(self, value, dtype: torch.dtype):
        raise NotImplementedError

    def none(self):  # an omitted optional input
        raise NotImplementedError


class _OnnxscriptBuilder(_Builder):
    def __init__(self, dtype: torch.dtype):
        import onnx_ir as ir
        import onnxscript

        self._ir = ir
        # The exporter's tracer records with the opset the model is built for.
        tracer = onnxscript.evaluator.default()
        opset = getattr(tracer, "opset", None)
        if opset is None:
            from torch.onnx._constants import ONNX_DEFAULT_OPSET

            opset = onnxscript.values.Opset("", ONNX_DEFAULT_OPSET)
        self._opset = opset
        self.opset = opset.version
        self.dtype = dtype

    def op(self, name, *inputs, **attributes):
        return getattr(self._opset, name)(*inputs, **attributes)

    # onnx_ir wraps torch tensors of any dtype (bfloat16 included) as ONNX tensors.
    def ints(self, values):
        return self._opset.Constant(value=self._ir.tensor(torch.tensor(list(values),
                                                                       dtype=torch.int64)))

    def full(self, shape, fill):
        return self._opset.Constant(
            value=self._ir.tensor(torch.full(tuple(shape), fill, dtype=self.dtype)))

    def zeros(self, shape):
        return self._opset.ConstantOfShape(
            shape, value=self._ir.tensor(torch.zeros(1, dtype=self.dtype)))

    def cast(self, value, dtype):
        return self._opset.Cast(value, to=self._ir.tensor(torch.empty(0, dtype=dtype)).dtype)

    def none(self):
        return None


class _TorchScriptBuilder(_Builder):
    def __init__(self, g, dtype: torch.dtype):
        self._g = g
        self.opset = g.opset
        self.dtype = dtype

    def op(self, name, *inputs, **attributes):
        kw = {}
        for key, value in attributes.items():
            # The graph context's attribute suffix for ints and int lists alike.
            kw[key + "_i"] = list(value) if isinstance(value, (list, tuple)) else value
        return self._g.op(name, *inputs, **kw)

    def ints(self, values):
        return self._g.op("Constant", value_t=torch.tensor(list(values), dtype=torch.int64))

    def full(self, shape, fill):
        return self._g.op("Constant", value_t=torch.full(tuple(shape), fill, dtype=self.dtype))

    def zeros(self, shape):
        return self._g.op("ConstantOfShape", shape, value_t=torch.zeros(1, dtype=self.dtype))

    def cast(self, value, dtype):
        from torch.onnx._internal.torchscript_exporter import _type_utils

        return self._g.op("Cast", value,
                          to_i=_type_utils.JitScalarType.from_dtype(dtype).onnx_type())

    def none(self):
        from torch.onnx._internal.torchscript_exporter import symbolic_helper

        return symbolic_helper._optional_input_placeholder_tensor(self._g)


# ------------------------------------------------------------------------------ the translation


def _dims(b: _Builder, value, shape: List[Optional[int]], start: int, end: int):
    """shape[start:end] of `value` as a 1-D int64 value: a constant when those sizes are static."""
    if all(d is not None for d in shape[start:end]):
        return b.ints(shape[start:end])
    return b.op("Slice", b.op("Shape", value), b.ints([start]), b.ints([end]))


def _translate(b: _Builder, n: int, input, weight, x_shape: List[Optional[int]],
               w_shape: List[Optional[int]], stride, padding, dilation):
    """The ONNX graph of involution with n spatial axes; shapes hold None where symbolic."""
    name = f"involution{n}d"
    stride, padding, dilation = (list(v) for v in (stride, padding, dilation))
    for arg, values in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if len(values) != n:
            raise ValueError(f"involution.onnx: {name} expects {n} {arg} values, got {values}")
    if len(x_shape) != n + 2 or len(w_shape) != 2 * n + 2:
        raise ValueError(
            f"involution.onnx: {name} expects a {n + 2}-D input and a {2 * n + 2}-D weight, "
            f"got shapes {x_shape} and {w_shape}")
    channels, groups, kernel = x_shape[1], w_shape[1], w_shape[2:2 + n]
    if channels is None or groups is None or any(k is None for k in kernel):
        raise ValueError(
            f"involution.onnx: exporting {name} needs a static channel count, group count and "
            f"kernel size, got channels {channels}, groups {groups}, kernel {kernel} (None: "
            "symbolic); export with these dimensions static")
    if channels % groups:
        raise ValueError(f"involution.onnx: {name}: channels ({channels}) must be divisible by "
                         f"groups ({groups})")
    taps = math.prod(kernel)
    batch = _dims(b, weight, w_shape, 0, 1)
    out = _dims(b, weight, w_shape, 2 + n, 2 + 2 * n)

    if n == 2 and b.opset >= DEFORM_CONV_OPSET and b.dtype in _DEFORM_CONV_DTYPES:
        mask = b.op("Reshape", weight, b.op("Concat", batch, b.ints([groups * taps]), out, axis=0))
        offset = b.zeros(b.op("Concat", batch, b.ints([2 * groups * taps]), out, axis=0))
        ones = b.full([channels, 1] + kernel, 1.0)
        return b.op("DeformConv", input, ones, offset, b.none(), mask,
                    dilations=dilation, group=channels, kernel_shape=kernel,
                    offset_group=groups, pads=padding + padding, strides=stride)

    # The decomposition: pad once, then per tap a strided slice of the input times that tap's
    # kernel plane, broadcast over the channels of each group.
    half = b.dtype in _HALF_DTYPES
    x = b.op("Pad", input, b.ints([0, 0] + padding + [0, 0] + padding)) if any(padding) else input
    xp_shape = x_shape[:2] + [None if s is None else s + 2 * p
                              for s, p in zip(x_shape[2:], padding)]
    # (B, G, C/G, *padded) and (B, G, taps, *out)
    x = b.op("Reshape", x, b.op("Concat", _dims(b, x, xp_shape, 0, 1),
                                b.ints([groups, channels // groups]),
                                _dims(b, x, xp_shape, 2, 2 + n), axis=0))
    w = b.op("Reshape", weight, b.op("Concat", _dims(b, weight, w_shape, 0, 2), b.ints([taps]),
                                     out, axis=0))
    if half:
        x, w = b.cast(x, torch.float32), b.cast(w, torch.float32)
    out_static = w_shape[2 + n:]
    if all(o is not None for o in out_static):
        span = [s * (o - 1) + 1 for s, o in zip(stride, out_static)]
    else:  # s * (O - 1) + 1 per axis, from the weight's symbolic output size
        span = b.op("Add", b.op("Mul", b.op("Sub", out, b.ints([1] * n)), b.ints(stride)),
                    b.ints([1] * n))
    axes, steps = b.ints(list(range(3, 3 + n))), b.ints(stride)
    acc = None
    for t, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
        starts = [i * d for i, d in zip(tap, dilation)]
        if isinstance(span, list):
            ends = b.ints([s + e for s, e in zip(starts, span)])
        else:
            ends = b.op("Add", span, b.ints(starts))
        x_tap = b.op("Slice", x, b.ints(starts), ends, axes, steps)             # (B, G, C/G, *out)
        w_tap = b.op("Slice", w, b.ints([t]), b.ints([t + 1]), b.ints([2]))     # (B, G, 1, *out)
        term = b.op("Mul", x_tap, w_tap)
        acc = term if acc is None else b.op("Add", acc, term)
    if half:
        acc = b.cast(acc, b.dtype)
    return b.op("Reshape", acc, b.op("Concat", batch, b.ints([channels]), out, axis=0))


def _translate_fused(b: _Builder, n: int, input, reduced, span_weight, span_bias,
                     x_shape: List[Optional[int]], z_shape: List[Optional[int]],
                     s_shape: List[Optional[int]], kernel_size, stride, padding, dilation):
    """The ONNX graph of fused involution: the span conv as a standard 1x1 ``Conv``, its output
    reshaped to the kernel (B, G, K..., O...), then the involution's translation."""
    name = f"fused_involution{n}d"
    kernel = list(kernel_size)
    if len(kernel) != n or len(z_shape) != n + 2 or len(s_shape) != n + 2:
        raise ValueError(
            f"involution.onnx: {name} expects {n} kernel sizes, a {n + 2}-D reduced tensor and "
            f"a {n + 2}-D span weight, got {kernel}, shapes {z_shape} and {s_shape}")
    taps = math.prod(kernel)
    if s_shape[0] is None or s_shape[0] % taps:
        raise ValueError(f"involution.onnx: exporting {name} needs a static span_weight.size(0) "
                         f"that is a multiple of the {taps} taps, got {s_shape[0]}")
    groups = s_shape[0] // taps
    operands = [reduced, span_weight] + ([span_bias] if span_bias is not None else [])
    # Conv takes bfloat16 only from opset 22: the span conv then runs in float32.
    bfloat16 = b.dtype == torch.bfloat16
    if bfloat16:
        operands = [b.cast(v, torch.float32) for v in operands]
    kernel_flat = b.op("Conv", *operands)
    if bfloat16:
        kernel_flat = b.cast(kernel_flat, torch.bfloat16)
    weight = b.op("Reshape", kernel_flat,
                  b.op("Concat", _dims(b, reduced, z_shape, 0, 1), b.ints([groups] + kernel),
                       _dims(b, reduced, z_shape, 2, 2 + n), axis=0))
    w_shape = [z_shape[0], groups] + kernel + list(z_shape[2:])
    return _translate(b, n, input, weight, x_shape, w_shape, stride, padding, dilation)


# ------------------------------------------------------------------------------ dynamo exporter

_IR_TO_TORCH = {
    "FLOAT": torch.float32, "DOUBLE": torch.float64, "FLOAT16": torch.float16,
    "BFLOAT16": torch.bfloat16,
}


def _ir_info(value, what: str):
    """(static shape with None for symbolic sizes, torch dtype) of an onnxscript value."""
    if value.shape is None or value.dtype is None:
        raise ValueError(f"involution.onnx: the {what}'s shape and type must be known to export, "
                         f"got shape {value.shape} and type {value.dtype}")
    shape = [d if isinstance(d, int) else None for d in value.shape]
    dtype = _IR_TO_TORCH.get(value.dtype.name)
    if dtype is None:
        raise ValueError(f"involution.onnx: expected a float16, bfloat16, float32 or float64 "
                         f"{what}, got {value.dtype.name}")
    return shape, dtype


def _onnxscript_translation(n: int) -> Callable:
    def translate(input, weight, stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int]):
        x_shape, dtype = _ir_info(input, "input")
        w_shape, _ = _ir_info(weight, "weight")
        return _translate(_OnnxscriptBuilder(dtype), n, input, weight, x_shape, w_shape,
                          stride, padding, dilation)

    translate.__name__ = translate.__qualname__ = f"involution{n}d"
    translate.__doc__ = f"onnxscript translation of torch.ops.involution.involution{n}d."
    return translate


def _onnxscript_fused_translation(n: int) -> Callable:
    def translate(input, reduced, span_weight, span_bias, kernel_size: Sequence[int],
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]):
        x_shape, dtype = _ir_info(input, "input")
        z_shape, _ = _ir_info(reduced, "reduced tensor")
        s_shape, _ = _ir_info(span_weight, "span weight")
        return _translate_fused(_OnnxscriptBuilder(dtype), n, input, reduced, span_weight,
                                span_bias, x_shape, z_shape, s_shape, kernel_size, stride,
                                padding, dilation)

    translate.__name__ = translate.__qualname__ = f"fused_involution{n}d"
    translate.__doc__ = f"onnxscript translation of torch.ops.involution.fused_involution{n}d."
    return translate


involution2d = _onnxscript_translation(2)
involution3d = _onnxscript_translation(3)
fused_involution2d = _onnxscript_fused_translation(2)
fused_involution3d = _onnxscript_fused_translation(3)

#: {torch op: onnxscript translation}, for ``torch.onnx.export(..., custom_translation_table=)``.
custom_translation_table: Dict[Any, Callable] = {
    torch.ops.involution.involution2d.default: involution2d,
    torch.ops.involution.involution3d.default: involution3d,
    torch.ops.involution.fused_involution2d.default: fused_involution2d,
    torch.ops.involution.fused_involution3d.default: fused_involution3d,
}


def export(model, args=(), f=None, **kwargs):
    """``torch.onnx.export(model, args, f, dynamo=True, **kwargs)`` with the translations of the
    involution ops added; returns what it returns (a ``torch.onnx.ONNXProgram``).

    Keyword arguments pass through (``dynamic_shapes``, ``opset_version``, ``input_names``,
    ...). A ``custom_translation_table`` given here is merged over this module's. With
    ``dynamo=False`` the TorchScript-based exporter runs instead, with the symbolics this module
    registers, and returns None.
    """
    if kwargs.get("dynamo", True) is False:
        if kwargs.get("custom_translation_table"):
            raise ValueError("involution.onnx.export: custom_translation_table applies to the "
                             "dynamo exporter only, but dynamo=False was given")
        return torch.onnx.export(model, args, f, **kwargs)
    kwargs.pop("dynamo", None)
    table = dict(custom_translation_table)
    table.update(kwargs.pop("custom_translation_table", None) or {})
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table,
                             **kwargs)


# ----------------------------------------------------------------------------- TorchScript exporter


def _torchscript_symbolic(n: int) -> Callable:
    def symbolic(g, input, weight, stride, padding, dilation):
        from torch.onnx._internal.torchscript_exporter import _type_utils, symbolic_helper

        name = f"involution{n}d"
        if g.opset < _TORCHSCRIPT_MIN_OPSET:
            raise ValueError(f"involution.onnx: exporting {name} needs opset >= "
                             f"{_TORCHSCRIPT_MIN_OPSET}, got opset_version={g.opset}")
        params = [symbolic_helper._get_const(v, "is", k)
                  for v, k in ((stride, "stride"), (padding, "padding"), (dilation, "dilation"))]
        x_shape = symbolic_helper._get_tensor_sizes(input)
        w_shape = symbolic_helper._get_tensor_sizes(weight)
        # The exporter's shape inference loses the kernel's static sizes when the model builds
        # it with view(batch, G, KH, KW, ...), batch being traced as a Shape op. The traced
        # graph still has them; G and the kernel size, fixed by the model's structure, are taken
        # from there (the batch and output sizes stay symbolic).
        traced = symbolic_helper._get_tensor_sizes(g.original_node.inputsAt(1))
        if traced is not None and len(traced) == 2 * n + 2:
            w_shape = list(w_shape) if w_shape is not None else [None] * len(traced)
            for i in range(1, 2 + n):
                w_shape[i] = traced[i] if w_shape[i] is None else w_shape[i]
        if x_shape is None or w_shape is None:
            raise ValueError(f"involution.onnx: exporting {name} needs the ranks of the input and "
                             "weight, which the traced graph does not give")
        dtype = _type_utils.JitScalarType.from_value(input).dtype()
        return _translate(_TorchScriptBuilder(g, dtype), n, input, weight, list(x_shape), w_shape,
                          *params)

    symbolic.__name__ = f"involution{n}d_symbolic"
    return symbolic


def _torchscript_fused_symbolic(n: int) -> Callable:
    def symbolic(g, input, reduced, span_weight, span_bias, kernel_size, stride, padding,
                 dilation):
        from torch.onnx._internal.torchscript_exporter import _type_utils, symbolic_helper

        name = f"fused_involution{n}d"
        if g.opset < _TORCHSCRIPT_MIN_OPSET:
            raise ValueError(f"involution.onnx: exporting {name} needs opset >= "
                             f"{_TORCHSCRIPT_MIN_OPSET}, got opset_version={g.opset}")
        params = [symbolic_helper._get_const(v, "is", k)
                  for v, k in ((kernel_size, "kernel_size"), (stride, "stride"),
                               (padding, "padding"), (dilation, "dilation"))]
        shapes = [symbolic_helper._get_tensor_sizes(v) for v in (input, reduced, span_weight)]
        if any(shape is None for shape in shapes):
            raise ValueError(f"involution.onnx: exporting {name} needs the ranks of the input, "
                             "reduced tensor and span weight, which the traced graph does not "
                             "give")
        bias = None if symbolic_helper._is_none(span_bias) else span_bias
        dtype = _type_utils.JitScalarType.from_value(input).dtype()
        return _translate_fused(_TorchScriptBuilder(g, dtype), n, input, reduced, span_weight,
                                bias, *(list(shape) for shape in shapes), *params)

    symbolic.__name__ = f"fused_involution{n}d_symbolic"
    return symbolic


def _register_torchscript_symbolics() -> None:
    import torch.onnx

    register = getattr(torch.onnx, "register_custom_op_symbolic", None)
    if register is None:  # a torch without the TorchScript-based exporter: nothing to register
        return
    for n in (2, 3):
        # Registered at the base opset so that lower opsets get the clear error above instead
        # of "unrecognized namespace".
        register(f"involution::involution{n}d", _torchscript_symbolic(n), 9)
        register(f"involution::fused_involution{n}d", _torchscript_fused_symbolic(n), 9)


_register_torchscript_symbolics()
