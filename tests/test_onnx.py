"""ONNX export (involution.onnx): models using the ops run in onnxruntime with standard ops only.

Each model is exported, run in onnxruntime on the CPU and compared with eager PyTorch (float32:
max |difference| / max |eager| <= 1e-4, RedNet-26 1e-3). The onnx packages are pinned in the
Makefile's test environment; environments without them (the CUDA build's) skip this file.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

MISSING = ("{} is not installed; the Makefile installs onnx==1.23.2 onnxscript==0.7.2 "
           "onnxruntime==1.32.0 into a new .venv (into an existing one: pip install them)")
onnx = pytest.importorskip("onnx", reason=MISSING.format("onnx"))
import onnx.inliner  # noqa: E402, F811 (the submodule, after the skip)

pytest.importorskip("onnxscript", reason=MISSING.format("onnxscript"))
ort = pytest.importorskip("onnxruntime", reason=MISSING.format("onnxruntime"))

import involution  # noqa: E402
import involution.onnx  # noqa: E402
from involution.functional import involution2d, involution3d  # noqa: E402

STANDARD_DOMAINS = {"", "ai.onnx"}


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])


def run(model_proto, *inputs):
    sess = session(model_proto)
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    return [torch.from_numpy(y) for y in sess.run(None, feeds)]


def assert_matches(actual, expected, rel):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = ((actual.double() - expected.double()).abs().max()
           / expected.double().abs().max().clamp_min(1e-30)).item()
    assert err <= rel, f"max |onnxruntime - eager| / max |eager| = {err:.2e} > {rel:.0e}"


def inlined_op_types(model_proto):
    """(domain, op_type) of every node once the model's local functions are inlined."""
    inlined = onnx.inliner.inline_local_functions(model_proto)
    return {(n.domain, n.op_type) for n in inlined.graph.node}


def assert_standard_ops(model_proto):
    custom = {f"{d}::{t}" for d, t in inlined_op_types(model_proto) if d not in STANDARD_DOMAINS}
    assert not custom, f"non-standard ops after inlining: {sorted(custom)}"


def export_and_compare(model, inputs, rel=1e-4, **kwargs):
    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
    program = involution.onnx.export(model, inputs, **kwargs)
    assert isinstance(program, torch.onnx.ONNXProgram)
    (actual,) = run(program.model_proto, *inputs)
    assert_matches(actual, expected, rel)
    assert_standard_ops(program.model_proto)
    return program


# ------------------------------------------------------------------------------ 2-D and 3-D modules

INVOLUTION2D_CASES = {
    # name: (constructor kwargs, input size (C, H, W))
    "k7": (dict(in_channels=16, out_channels=16, kernel_size=7, padding=3, groups=1,
                reduce_ratio=4), (16, 10, 9)),
    "stride2-odd": (dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1,
                         groups=2, reduce_ratio=2), (8, 13, 11)),
    "stride2-k7-odd": (dict(in_channels=16, out_channels=16, kernel_size=7, stride=2, padding=3,
                            groups=2, reduce_ratio=4), (16, 15, 9)),
    "dilation2": (dict(in_channels=8, out_channels=8, kernel_size=3, dilation=2, padding=2,
                       groups=2, reduce_ratio=2), (8, 10, 10)),
    "anisotropic": (dict(in_channels=8, out_channels=8, kernel_size=(3, 5), stride=(2, 1),
                         padding=(2, 2), dilation=(2, 1), groups=4, reduce_ratio=2), (8, 11, 8)),
    "groups-in-ne-out": (dict(in_channels=6, out_channels=12, kernel_size=(3, 5), padding=(1, 2),
                              groups=3, reduce_ratio=3), (6, 8, 9)),
}


def randomise_batchnorm(model, seed=0):
    """Non-trivial BatchNorm statistics, so that the eval-mode graph is not an identity."""
    gen = seeded(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model


@pytest.mark.parametrize("case", list(INVOLUTION2D_CASES))
def test_involution2d_module_exports_as_deform_conv(case):
    kwargs, (c, h, w) = INVOLUTION2D_CASES[case]
    torch.manual_seed(0)
    model = randomise_batchnorm(involution.Involution2d(**kwargs))
    x = torch.randn(2, c, h, w, generator=seeded())
    program = export_and_compare(model, (x,))
    ops = inlined_op_types(program.model_proto)
    assert ("", "DeformConv") in ops  # the default opset (20) has it


def test_involution2d_below_opset_19_uses_the_decomposition():
    kwargs, (c, h, w) = INVOLUTION2D_CASES["stride2-odd"]
    torch.manual_seed(0)
    model = randomise_batchnorm(involution.Involution2d(**kwargs))
    x = torch.randn(2, c, h, w, generator=seeded())
    program = export_and_compare(model, (x,), opset_version=18)
    ops = {t for _, t in inlined_op_types(program.model_proto)}
    assert "DeformConv" not in ops and {"Pad", "Slice", "Mul", "Add"} <= ops
    assert program.model_proto.opset_import[0].version == 18


def test_involution3d_module_exports_as_standard_ops():
    torch.manual_seed(0)
    # "Same" padding (the kernel branch pools with avg_pool3d); without it, below.
    model = randomise_batchnorm(involution.Involution3d(
        4, 8, kernel_size=(3, 3, 5), stride=(1, 2, 1), padding=(2, 1, 2), dilation=(2, 1, 1),
        groups=2, reduce_ratio=2))
    x = torch.randn(2, 4, 6, 7, 5, generator=seeded())
    program = export_and_compare(model, (x,))
    ops = {t for _, t in inlined_op_types(program.model_proto)}
    assert {"Pad", "Slice", "Mul", "Add"} <= ops and "DeformConv" not in ops


def test_dynamic_sizes_without_same_padding():
    """Layers without "same" padding, whose kernel branch eager mode pools in floor mode, ceil
    mode or adaptively by the size, export with dynamic batch and sizes (the choice is made in
    the graph) and match eager at sizes of each kind; Involution3d's adaptive pooling included
    (adaptive_avg_pool3d does not export)."""
    torch.manual_seed(0)
    model2d = randomise_batchnorm(involution.Involution2d(
        8, 8, kernel_size=3, padding=0, stride=2, groups=2, reduce_ratio=2))
    model3d = randomise_batchnorm(involution.Involution3d(
        4, 8, kernel_size=3, padding=0, stride=(2, 1, 1), groups=2, reduce_ratio=2))
    # 2-D: odd sizes pool in floor mode, the others adaptively.
    for model, x, others in (
            (model2d, torch.randn(2, 8, 13, 11, generator=seeded()),
             [(3, 8, 16, 14), (1, 8, 17, 15), (2, 8, 12, 19)]),
            (model3d, torch.randn(2, 4, 6, 7, 8, generator=seeded()), [(3, 4, 9, 8, 10)])):
        shapes = {0: Dim("batch", max=64)}
        shapes.update({a: Dim(f"s{a}", min=5, max=64) for a in range(2, x.dim())})
        program = export_and_compare(model, (x,), dynamic_shapes=(shapes,))
        for size in others:
            x2 = torch.randn(*size, generator=seeded(6))
            with torch.no_grad():
                expected = model(x2)
            (actual,) = run(program.model_proto, x2)
            assert_matches(actual, expected, 1e-4)


# ------------------------------------------------------------------------------ the functional ops


class FunctionalNet(nn.Module):
    """The functional ops inside a small model: kernels from 1x1 convs, a 2-D then a 3-D op."""

    def __init__(self, channels=8, groups=2, k=3):
        super().__init__()
        self.groups, self.k = groups, k
        self.span2d = nn.Conv2d(channels, groups * k * k, 1)
        self.span3d = nn.Conv3d(channels, groups * k ** 3, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        kernel = self.span2d(x).view(b, self.groups, self.k, self.k, h, w)
        y = torch.relu(involution2d(x, kernel, padding=1))
        v = y.unsqueeze(2).expand(-1, -1, 3, -1, -1)  # a depth axis of 3
        kernel3 = self.span3d(v).view(b, self.groups, self.k, self.k, self.k, 3, h, w)
        return involution3d(v, kernel3, padding=1).sum(2) + y


def test_functional_ops_in_a_model_with_dynamic_batch_and_size():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(2, 8, 7, 9, generator=seeded())
    shapes = ({0: Dim("batch", max=64), 2: Dim("h", min=2, max=256), 3: Dim("w", min=2, max=256)},)
    program = export_and_compare(model, (x,), dynamic_shapes=shapes)
    for size in [(1, 8, 5, 6), (3, 8, 12, 10)]:
        x2 = torch.randn(*size, generator=seeded(1))
        with torch.no_grad():
            expected = model(x2)
        (actual,) = run(program.model_proto, x2)
        assert_matches(actual, expected, 1e-4)


def test_dynamic_batch_and_size_at_stride_1():
    kwargs, (c, h, w) = INVOLUTION2D_CASES["k7"]
    torch.manual_seed(0)
    model = randomise_batchnorm(involution.Involution2d(**kwargs)).eval()
    x = torch.randn(2, c, h, w, generator=seeded())
    shapes = ({0: Dim("batch", max=64), 2: Dim("h", min=4, max=512),
               3: Dim("w", min=4, max=512)},)
    program = export_and_compare(model, (x,), dynamic_shapes=shapes, input_names=["image"])
    graph_input = program.model_proto.graph.input[0]
    assert graph_input.name == "image"
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]
    for size in [(1, c, 5, 17), (4, c, 16, 12)]:
        x2 = torch.randn(*size, generator=seeded(2))
        with torch.no_grad():
            expected = model(x2)
        (actual,) = run(program.model_proto, x2)
        assert_matches(actual, expected, 1e-4)


def test_dynamic_batch_3d_and_stride_2():
    torch.manual_seed(0)
    model2d = randomise_batchnorm(involution.Involution2d(
        **INVOLUTION2D_CASES["stride2-odd"][0])).eval()
    model3d = randomise_batchnorm(involution.Involution3d(
        4, 4, kernel_size=3, padding=1, groups=2, reduce_ratio=2)).eval()
    for model, x in ((model2d, torch.randn(2, 8, 13, 11, generator=seeded())),
                     (model3d, torch.randn(2, 4, 4, 5, 6, generator=seeded()))):
        program = export_and_compare(model, (x,), dynamic_shapes=({0: Dim("batch", max=64)},))
        x2 = torch.randn(5, *x.shape[1:], generator=seeded(3))
        with torch.no_grad():
            expected = model(x2)
        (actual,) = run(program.model_proto, x2)
        assert_matches(actual, expected, 1e-4)


# ------------------------------------------------------------------------------ RedNet-26


def test_rednet26_at_64x64():
    torch.manual_seed(0)
    model = involution.models.rednet26(num_classes=10)
    # A fresh RedNet's BatchNorm statistics (mean 0, variance 1) let the activations grow by
    # orders of magnitude through the stages in eval mode; a few training-mode passes on random
    # data calibrate them, as any trained model's are.
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(torch.randn(8, 3, 64, 64, generator=seeded(10 + i)))
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=seeded())
    program = export_and_compare(model, (x,), rel=1e-3,
                                 dynamic_shapes=({0: Dim("batch", max=64)},))
    ops = [n.op_type for n in program.model_proto.graph.node]
    # The blocks run the fused op (the default): each exports as a 1x1 Conv and a DeformConv.
    layers = [n for n in program.exported_program.graph.nodes
              if n.target is torch.ops.involution.fused_involution2d.default]
    assert len(layers) == 9 and ops.count("DeformConv") == 9  # the stem's and one per block
    x2 = torch.randn(3, 3, 64, 64, generator=seeded(4))
    with torch.no_grad():
        expected = model(x2)
    (actual,) = run(program.model_proto, x2)
    assert_matches(actual, expected, 1e-3)


# ------------------------------------------------------------------------------ API and errors


def test_custom_translation_table_with_torch_onnx_export():
    kwargs, (c, h, w) = INVOLUTION2D_CASES["dilation2"]
    torch.manual_seed(0)
    model = involution.Involution2d(**kwargs).eval()
    x = torch.randn(1, c, h, w, generator=seeded())
    program = torch.onnx.export(model, (x,), dynamo=True,
                                custom_translation_table=involution.onnx.custom_translation_table)
    with torch.no_grad():
        assert_matches(run(program.model_proto, x)[0], model(x), 1e-4)
    assert set(involution.onnx.custom_translation_table) == {
        torch.ops.involution.involution2d.default, torch.ops.involution.involution3d.default,
        torch.ops.involution.fused_involution2d.default,
        torch.ops.involution.fused_involution3d.default}


def test_export_writes_the_file(tmp_path):
    kwargs, (c, h, w) = INVOLUTION2D_CASES["dilation2"]
    torch.manual_seed(0)
    model = involution.Involution2d(**kwargs).eval()
    x = torch.randn(1, c, h, w, generator=seeded())
    path = tmp_path / "model.onnx"
    involution.onnx.export(model, (x,), str(path), output_names=["y"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["y"]
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_matches(torch.from_numpy(y), model(x), 1e-4)


def error_chain(excinfo):
    """The messages of an exception and of everything it was raised from."""
    messages, e = [], excinfo.value
    while e is not None:
        messages.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(messages)


def test_symbolic_channel_count_is_a_clear_error():
    def f(x, w):
        return involution2d(x, w, padding=1)

    class Model(nn.Module):
        def forward(self, x, w):
            return f(x, w)

    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(1, 2, 3, 3, 5, 5)
    half = Dim("half", min=1, max=32)
    with pytest.raises(Exception) as excinfo:
        involution.onnx.export(Model(), (x, w), dynamic_shapes=({1: 2 * half}, None))
    assert "needs a static channel count, group count and kernel size" in error_chain(excinfo)


def test_import_does_not_need_onnx(tmp_path):
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("onnx", "onnxscript", "onnxruntime", "onnx_ir"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import involution.onnx
        assert len(involution.onnx.custom_translation_table) == 4  # with the fused ops
        assert not any(m.split(".")[0] in ("onnx", "onnxscript") for m in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- TorchScript exporter


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_exporter(tmp_path):
    """The legacy exporter (dynamo=False) gets the same translations through registered
    symbolics: DeformConv at opset 19, the decomposition below it and for 3-D."""
    torch.manual_seed(0)
    model2d = randomise_batchnorm(involution.Involution2d(
        **INVOLUTION2D_CASES["stride2-odd"][0])).eval()
    model3d = randomise_batchnorm(involution.Involution3d(
        4, 4, kernel_size=3, stride=(1, 2, 1), padding=1, groups=2, reduce_ratio=2)).eval()
    cases = [(model2d, torch.randn(2, 8, 13, 11, generator=seeded()), 19, "DeformConv"),
             (model2d, torch.randn(2, 8, 13, 11, generator=seeded()), 17, "Slice"),
             (model3d, torch.randn(2, 4, 4, 5, 6, generator=seeded()), 17, "Slice")]
    for i, (model, x, opset, expected_op) in enumerate(cases):
        path = tmp_path / f"m{i}.onnx"
        involution.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                               input_names=["x"], dynamic_axes={"x": {0: "batch"}})
        proto = onnx.load(str(path))
        ops = {n.op_type for n in proto.graph.node}
        assert expected_op in ops and (opset >= 19 or "DeformConv" not in ops), ops
        assert_standard_ops(proto)
        x2 = torch.randn(3, *x.shape[1:], generator=seeded(5))
        with torch.no_grad():
            expected = model(x2)
        (actual,) = run(proto, x2)
        assert_matches(actual, expected, 1e-4)

    with pytest.raises(Exception) as excinfo:
        torch.onnx.export(model2d, (cases[0][1],), str(tmp_path / "old.onnx"), dynamo=False,
                          opset_version=10)
    assert "needs opset >= 11, got opset_version=10" in error_chain(excinfo)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_exporter_dynamic_sizes(tmp_path):
    """The TorchScript exporter traces the kernel branch's size arithmetic, and the pooling of
    layers without "same" padding makes its choice in the graph: batch, height and width (and
    depth) stay dynamic, at stride 2 and without "same" padding too."""
    torch.manual_seed(0)
    kw = dict(groups=2, reduce_ratio=2)
    cases = [
        (involution.Involution2d(8, 8, kernel_size=3, padding=1, stride=2, **kw), (8, 13, 11),
         [(3, 8, 16, 14), (1, 8, 9, 20)]),
        (involution.Involution2d(8, 8, kernel_size=3, padding=0, stride=2, **kw), (8, 13, 11),
         [(3, 8, 16, 14), (1, 8, 17, 15)]),
        (involution.Involution3d(4, 4, kernel_size=3, padding=0, **kw), (4, 6, 7, 8),
         [(3, 4, 9, 8, 10)]),
    ]
    for i, (model, shape, others) in enumerate(cases):
        model = randomise_batchnorm(model).eval()
        x = torch.randn(2, *shape, generator=seeded())
        axes = {a: f"d{a}" for a in [0] + list(range(2, x.dim()))}
        for opset in (17, 19):
            path = tmp_path / f"m{i}_{opset}.onnx"
            involution.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                                   input_names=["x"], dynamic_axes={"x": axes})
            proto = onnx.load(str(path))
            assert_standard_ops(proto)
            for size in [x.shape] + others:
                x2 = torch.randn(*size, generator=seeded(7))
                with torch.no_grad():
                    expected = model(x2)
                (actual,) = run(proto, x2)
                assert_matches(actual, expected, 1e-4)


# ------------------------------------------------------------------------------ benchmark column

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")


def test_benchmark_onnxruntime_column():
    """The benchmark's --onnxruntime worker (in process, tiny sizes: this checks the program,
    not speed) and its table."""
    sys.path.insert(0, BENCHMARKS)
    from deployment import ONNXRUNTIME_VARIANTS, format_onnxruntime, onnxruntime_worker
    from measure import REDNET50_SHAPES

    shape = next(s for s in REDNET50_SHAPES if s.name == "stage4-s2")
    out = onnxruntime_worker({"shape": shape._asdict(), "batch": 1, "threads": 1, "repeats": 2,
                              "warmup": 0})
    names = [name for name, _ in ONNXRUNTIME_VARIANTS]
    assert set(out["times"]) == {"ours", *names} and all(t > 0 for t in out["times"].values())
    assert all(out["max_abs_diff"][n] < 1e-4 for n in names), out["max_abs_diff"]
    table = format_onnxruntime({"batch": 1, "rounds": 2,
                                "rows": [{"shape": shape._asdict(), "threads": 1, **out}]})
    assert "stage4-s2" in table and "total" in table and "ort DeformConv ms" in table


def test_benchmark_onnxruntime_is_cpu_only():
    out = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "run.py"), "--onnxruntime",
                          "--device", "cuda"], capture_output=True, text=True)
    assert out.returncode != 0 and "--onnxruntime runs on the CPU only" in out.stderr
