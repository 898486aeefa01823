"""torch.compile as users run it: the inductor backend with default settings, training and
inference at a second input size and then a second batch size, each compared with eager.

With default settings PyTorch compiles the first call for its static shapes and recompiles with
symbolic sizes for the dimensions that change (automatic dynamic shapes), which is what a last
partial batch or multi-scale training does. Also covered: ``dynamic=True`` in training and
inductor's freezing for RedNet inference. Inductor compiles on the CPU take tens of seconds,
so each model is small and serves all its sizes.

Most comparisons run in float64: in train mode BatchNorm's batch statistics over a few samples
make the parameter gradients ill-conditioned (see test_models.py), and the point here is that
compiled and eager compute the same function and derivative (they agree to ~1e-12).
"""

import copy

import torch
import torch.nn as nn

import involution
from involution.models import RedNet

TOL = 1e-4  # max |compiled - eager| <= TOL * max |eager|, per tensor


def assert_matches(actual, expected, what):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= TOL, f"{what}: max |compiled - eager| / max |eager| = {err:.1e}"


def compare_training(model, shapes, dtype=torch.float64, **compile_kwargs):
    """One SGD step per shape on `model` eager and on a compiled copy: outputs, input and
    parameter gradients, and the BatchNorm statistics must match."""
    torch._dynamo.reset()
    eager = model.train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, **compile_kwargs)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.01)
    opt_c = torch.optim.SGD(compiled_model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = torch.randn(shape, generator=gen, dtype=dtype)
        x_e, x_c = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_e, y_c = eager(x_e), compiled(x_c)
        assert_matches(y_c, y_e, f"output at {shape}")
        y_e.square().mean().backward()
        y_c.square().mean().backward()
        assert_matches(x_c.grad, x_e.grad, f"input gradient at {shape}")
        for (name, p_c), p_e in zip(compiled_model.named_parameters(), eager.parameters()):
            assert_matches(p_c.grad, p_e.grad, f"gradient of {name} at {shape}")
        opt_e.step()
        opt_c.step()
        opt_e.zero_grad()
        opt_c.zero_grad()
    for (name, b_c), b_e in zip(compiled_model.named_buffers(), eager.buffers()):
        if b_e.is_floating_point():
            assert_matches(b_c, b_e, f"buffer {name}")


def compare_inference(model, shapes, dtype=torch.float64, **compile_kwargs):
    torch._dynamo.reset()
    model.eval()
    compiled = torch.compile(model, **compile_kwargs)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape, generator=gen, dtype=dtype)
            assert_matches(compiled(x), model(x), f"output at {shape}")


def calibrate_batchnorm(model, shape, seed=3):
    """Non-trivial BatchNorm statistics (a few train-mode passes), so eval mode is no identity
    and a fresh RedNet's activations stay in range."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(shape, generator=gen, dtype=next(model.parameters()).dtype))
    return model


def involution2d_layers():
    """One small network with the layer kinds whose compiled graphs differ: the reported layer
    ("same" padding at stride 2: the kernel branch pools in ceil mode), no padding at stride 2
    with a non-square kernel (it pools in floor mode where the height is odd, adaptively
    otherwise) and no padding at stride 1 (always adaptively; this one runs the unfused op)."""
    torch.manual_seed(0)
    kw = dict(groups=2, reduce_ratio=2)
    return nn.Sequential(
        involution.Involution2d(8, 8, kernel_size=3, padding=1, stride=2, **kw),
        involution.Involution2d(8, 8, kernel_size=(3, 2), padding=0, stride=2, **kw),
        involution.Involution2d(8, 8, kernel_size=3, padding=0, fused=False, **kw),
    ).double()


# A new size and batch size (the second layer sees 11x10, then 12x12), then a new batch size
# alone. (A third size would compile again in training: inductor specializes the strides of a
# saved convolution output in the backward graph, as it does for any conv + BatchNorm network.
# Batch size 1 is left out: PyTorch specializes sizes of 1.)
SHAPES_2D = [(3, 8, 21, 19), (2, 8, 24, 23), (4, 8, 24, 23)]


def test_involution2d_training_after_size_and_batch_changes():
    compare_training(involution2d_layers(), SHAPES_2D)


def test_involution2d_inference_after_size_and_batch_changes():
    model = calibrate_batchnorm(involution2d_layers(), SHAPES_2D[0])
    compare_inference(model, SHAPES_2D + [(3, 8, 22, 26)])


def test_training_with_dynamic_true():
    """The reported layer, as reported (float32), compiled with dynamic=True."""
    torch.manual_seed(0)
    layer = involution.Involution2d(8, 8, kernel_size=3, padding=1, stride=2, groups=2,
                                    reduce_ratio=2)
    compare_training(layer, [(3, 8, 13, 11), (2, 8, 15, 17)], dtype=torch.float32, dynamic=True)


def test_involution3d_stride_2_training_and_inference():
    torch.manual_seed(0)
    layer = involution.Involution3d(4, 4, kernel_size=3, padding=1, stride=2, groups=2,
                                    reduce_ratio=2).double()
    compare_training(layer, [(2, 4, 7, 6, 9), (3, 4, 9, 8, 10)])
    compare_inference(layer, [(2, 4, 7, 6, 9), (3, 4, 9, 8, 10), (4, 4, 8, 11, 7)])


def small_rednet(dtype=torch.float64):
    """RedNet-26's stem and first two stages (one block each): its involutions at stride 1 and
    2, kernel sizes 3 and 7, the fused op; the last two stages, wider and at 1/16 and 1/32 of
    the size, are left out to keep the inductor compiles short."""
    torch.manual_seed(0)
    model = RedNet((1, 1, 1, 1), num_classes=10)
    model.layer3, model.layer4 = nn.Identity(), nn.Identity()
    model.fc = nn.Linear(512, 10)
    return model.to(dtype)


def test_rednet_training_at_64_then_96():
    compare_training(small_rednet(), [(2, 3, 64, 64), (2, 3, 96, 96)])


def test_rednet_inference_with_freezing():
    # float32: freezing prepacks the convolutions' weights for oneDNN, which has no float64.
    model = calibrate_batchnorm(small_rednet(torch.float32), (4, 3, 64, 64))
    with torch._inductor.config.patch(freezing=True):
        compare_inference(model, [(2, 3, 64, 64), (3, 3, 96, 96), (4, 3, 80, 72)],
                          dtype=torch.float32)
