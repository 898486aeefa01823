"""torch.compile and torch.export see the ops through their meta kernels, without graph breaks."""

import torch
import torch._dynamo.testing
from helpers import Case, involution2d_reference

import involution

ops = torch.ops.involution


def loss(x, w):
    return ops.involution2d(x, w, [2, 1], [1, 2], [1, 2]).square().sum()


def test_compile_fullgraph_dynamic_shapes_forward_and_backward():
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, backend=counter, fullgraph=True, dynamic=True)
    frames_after_first_call = None
    # H != W everywhere: dynamo's duck sizing would otherwise tie them together.
    for size in [(9, 10), (12, 11), (17, 13)]:
        case = Case(2, 6, 3, size, (3, 3), (2, 1), (1, 2), (1, 2))
        x, w = case.tensors(requires_grad=True)
        gx, gw = torch.autograd.grad(compiled(x, w), (x, w))
        rx, rw = x.detach().requires_grad_(), w.detach().requires_grad_()
        ref = involution2d_reference(rx, rw, *case.params()).square().sum()
        rgx, rgw = torch.autograd.grad(ref, (rx, rw))
        torch.testing.assert_close(gx, rgx)
        torch.testing.assert_close(gw, rgw)
        if frames_after_first_call is None:
            frames_after_first_call = counter.frame_count
    assert counter.frame_count == frames_after_first_call, "a new spatial size recompiled"


def test_compiled_module_does_not_recompile_for_new_sizes():
    torch._dynamo.reset()
    model = involution.Involution2d(8, 16, kernel_size=3, padding=1, stride=2, groups=4,
                                    reduce_ratio=2)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for size in [(16, 18), (20, 24), (32, 18), (12, 14)]:
        x = torch.randn(3, 8, *size, requires_grad=True)
        y = compiled(x)
        y.sum().backward()
        torch.testing.assert_close(y, model(x))
        frames.append(counter.frame_count)
    assert frames == frames[:1] * 4, f"recompiled: frame counts {frames}"


def test_compile_module_with_inductor_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        involution.Involution2d(8, 16, kernel_size=5, padding=2, stride=2, groups=4,
                                reduce_ratio=2),
        torch.nn.ReLU(),
    )
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 8, 15, 15, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = compiled(x)
    y_ref = model(x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-4)


def test_export_runs_and_matches():
    torch.manual_seed(0)
    model = involution.Involution2d(8, 8, kernel_size=3, padding=1, groups=2).eval()
    x = torch.randn(2, 8, 12, 12)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "involution.fused_involution2d.default" in targets  # the module's default
    x5 = torch.randn(5, 8, 12, 12)
    torch.testing.assert_close(exported.module()(x5), model(x5))
