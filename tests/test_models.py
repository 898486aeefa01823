"""RedNet: parameter counts, official-checkpoint conversion against an independent copy of the
official (mmcls, unfold-based) network, odd input sizes, and torch.compile."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from involution.models import (
    RedNet,
    convert_official_state_dict,
    rednet26,
    rednet38,
    rednet50,
    rednet101,
    rednet152,
)

FACTORIES = {26: rednet26, 38: rednet38, 50: rednet50, 101: rednet101, 152: rednet152}
STAGE_BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3)}


# --- The official network, written independently, with the official module names ----------
# Mirrors d-li14/involution cls/mmcls/models/backbones/rednet.py (mmcv ConvModule = conv, bn,
# activation; mmcls ImageClassifier = backbone, GlobalAveragePooling neck, LinearClsHead), so
# that its state_dict has exactly the published checkpoints' keys.

class OfficialConvModule(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else None
        self.activate = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.activate(x) if self.activate is not None else x


class OfficialInvolution(nn.Module):
    def __init__(self, channels, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride, self.channels = kernel_size, stride, channels
        self.group_channels = 16
        self.groups = channels // self.group_channels
        self.conv1 = OfficialConvModule(channels, channels // 4, 1)
        self.conv2 = OfficialConvModule(channels // 4, kernel_size ** 2 * self.groups, 1,
                                        norm=False, act=False)
        if stride > 1:
            self.avgpool = nn.AvgPool2d(stride, stride)
        self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, stride)

    def forward(self, x):
        weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
        b, c, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size ** 2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size ** 2,
                                  h, w)
        return (weight * out).sum(dim=3).view(b, self.channels, h, w)


class OfficialBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, downsample):
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = OfficialInvolution(mid, 7, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class OfficialBackbone(nn.Module):
    def __init__(self, stage_blocks):
        super().__init__()
        self.stem = nn.Sequential(
            OfficialConvModule(3, 32, 3, stride=2, padding=1),
            OfficialInvolution(32, 3, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            OfficialConvModule(32, 64, 3, stride=1, padding=1),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, n in enumerate(stage_blocks):
            cout, stride = 256 * 2 ** i, (1, 2, 2, 2)[i]
            downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
            blocks = [OfficialBottleneck(cin, cout, stride, downsample)]
            blocks += [OfficialBottleneck(cout, cout, 1, None) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class OfficialHead(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(2048, num_classes)


class OfficialRedNet(nn.Module):
    def __init__(self, stage_blocks, num_classes=1000):
        super().__init__()
        self.backbone = OfficialBackbone(stage_blocks)
        self.head = OfficialHead(num_classes)

    def forward(self, x):
        feat = F.adaptive_avg_pool2d(self.backbone(x), 1).flatten(1)
        return self.head.fc(feat)


def randomize_(model, seed):
    """Random weights and BN statistics at scales that keep the activations O(1) through the
    network, so eval mode is not the identity-BN case and nothing over- or underflows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                std = 1.0 / math.sqrt(module.weight[0].numel())
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(
                    int(torch.randint(1, 1000, (1,), generator=gen)))
        for module in model.modules():
            if isinstance(module, OfficialInvolution):  # K*K taps are summed: keep the sum O(1)
                module.conv2.conv.weight /= module.kernel_size
                module.conv2.conv.bias /= module.kernel_size
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --- Parameter counts ---------------------------------------------------------------------

# Exact counts of the official architecture with 1000 classes (the official-layout copy above
# has the same, checked below), and the paper's Table (in millions).
EXACT = {26: 9_233_166, 38: 12_386_986, 50: 15_540_806, 101: 25_652_950, 152: 33_984_582}
PAPER = {26: 9.23, 38: 12.39, 50: 15.54, 101: 25.65, 152: 33.99}


@pytest.mark.parametrize("depth", sorted(FACTORIES))
def test_parameter_counts(depth):
    model = FACTORIES[depth]()
    assert isinstance(model, RedNet)
    assert n_params(model) == EXACT[depth]
    assert n_params(OfficialRedNet(STAGE_BLOCKS[depth])) == EXACT[depth]
    if depth == 152:
        # The official code has 33,984,582 parameters = 33.98M; the paper and the official
        # README print 33.99M (consistent with rounding 33.985 again, a double rounding).
        assert round(EXACT[depth] / 1e6, 2) == 33.98
    else:
        assert round(n_params(model) / 1e6, 2) == PAPER[depth]
    assert n_params(FACTORIES[depth](num_classes=10)) == EXACT[depth] - 2049 * 990


# --- Official checkpoints -----------------------------------------------------------------

@pytest.fixture(scope="module")
def official26():
    return randomize_(OfficialRedNet(STAGE_BLOCKS[26]), seed=0).double()


def test_official_checkpoint_keys_are_the_published_layout(official26):
    keys = set(official26.state_dict())
    for key in ["backbone.stem.0.conv.weight", "backbone.stem.0.bn.running_var",
                "backbone.stem.1.conv1.conv.weight", "backbone.stem.1.conv1.bn.weight",
                "backbone.stem.1.conv2.conv.weight", "backbone.stem.1.conv2.conv.bias",
                "backbone.stem.2.num_batches_tracked", "backbone.stem.4.conv.weight",
                "backbone.stem.4.bn.bias", "backbone.layer3.3.conv2.conv1.conv.weight",
                "backbone.layer3.3.conv2.conv1.bn.running_mean",
                "backbone.layer3.3.conv2.conv2.conv.bias", "backbone.layer4.0.downsample.0.weight",
                "backbone.layer4.0.downsample.1.running_var", "head.fc.weight", "head.fc.bias"]:
        assert key in keys


def test_converted_official_checkpoint_gives_the_official_output(official26):
    official = official26
    ckpt = {"meta": {"epoch": 130}, "state_dict": official.state_dict()}
    converted = convert_official_state_dict(ckpt)
    ours = rednet26().double()
    ours.load_state_dict(converted, strict=True)
    # The values are passed through, not copied.
    assert converted["layer2.1.involution.span.weight"] is \
        ckpt["state_dict"]["backbone.layer2.1.conv2.conv2.conv.weight"]
    official.eval()
    ours.eval()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official(x)
        actual = ours(x)
    # float64 on both sides; the two differ only in summation order (unfold-and-sum vs the op,
    # and BN folding), each step rounding at ~1e-16 relative, so 1e-10 of the output's scale is
    # ~6 orders of magnitude of headroom yet far below any real mistake (O(scale)).
    scale = expected.abs().max().item()
    assert 0.1 < scale < 1e3, scale  # the random weights keep the network well-conditioned
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * scale)
    print(f"rednet26 vs official: max abs diff {(actual - expected).abs().max().item():.3g} "
          f"(output scale {scale:.3g})")


def test_train_mode_matches_the_official_including_running_stats(official26):
    official = copy.deepcopy(official26).train()
    ours = rednet26().double()
    ours.load_state_dict(convert_official_state_dict(official.state_dict()))
    ours.train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = official(x)
    actual = ours(x)
    # Same float64 argument as the eval-mode test (measured: ~2e-13 at an output scale of ~3).
    torch.testing.assert_close(actual, expected, rtol=1e-10,
                               atol=1e-10 * expected.abs().max().item())
    after = convert_official_state_dict(official.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, after[key], rtol=1e-10, atol=1e-12, msg=key)


def test_converter_accepts_a_dataparallel_prefix(official26):
    sd = {"module." + k: v for k, v in official26.state_dict().items()}
    converted = convert_official_state_dict(sd)
    assert set(converted) == set(rednet26().state_dict())


def test_converter_tolerates_missing_num_batches_tracked(official26):
    sd = {k: v for k, v in official26.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    rednet26().double().load_state_dict(convert_official_state_dict(sd), strict=True)


def test_converter_names_unknown_keys(official26):
    sd = dict(official26.state_dict())
    sd["backbone.layer1.0.conv2.conv3.conv.weight"] = torch.zeros(1)
    sd["neck.something"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"2 key\(s\) are not part of an official RedNet.*"
                                         r"layer1\.0\.conv2\.conv3\.conv\.weight.*neck"):
        convert_official_state_dict(sd)


def test_converter_names_missing_keys(official26):
    sd = dict(official26.state_dict())
    del sd["backbone.layer3.2.conv2.conv2.conv.bias"]
    del sd["head.fc.weight"]
    with pytest.raises(ValueError, match=r"2 key\(s\) .* missing: .*"
                                         r"'backbone\.layer3\.2\.conv2\.conv2\.conv\.bias'"):
        convert_official_state_dict(sd)


def test_a_deeper_checkpoint_does_not_load_into_a_shallower_model():
    sd = OfficialRedNet(STAGE_BLOCKS[38]).state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        rednet26().load_state_dict(convert_official_state_dict(sd))


# --- Odd sizes, compile ---------------------------------------------------------------------

def test_odd_input_size_forward_and_backward():
    # 97 -> 49 (stem) -> 25 (maxpool) -> 13 -> 7 -> 4: every stride-2 involution sees an odd
    # size, where the official network fails (its AvgPool2d gives one row too few).
    torch.manual_seed(0)
    model = rednet26(num_classes=10)
    x = torch.randn(2, 3, 97, 97, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 10)
    assert model.forward_features(x.detach()[:1]).shape == (1, 2048, 4, 4)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(RuntimeError):
        OfficialRedNet(STAGE_BLOCKS[26])(x.detach())


def test_torch_compile_fullgraph_matches_eager():
    # float64, not float32: in train mode at initialisation this network's parameter gradients
    # are ill-conditioned in float32 whoever computes them (the head's global average pool
    # makes the gradient reaching layer4 constant over space, and train-mode BN over 2x2x2
    # samples subtracts its mean: catastrophic cancellation). Eager float32 itself is 1e-2 to
    # 1e-1 (max-abs relative) away from float64 on such gradients, so a 1e-4 float32 comparison
    # would test rounding luck. In float64 the compiled and eager graphs agree to ~1e-12, which
    # shows they compute the same function and derivative.
    # 65x65: odd at every stride-2 involution (33, 17, 9), so inductor also compiles the
    # ceil-mode kernel-branch pooling.
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = rednet26(num_classes=10).double().train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 65, 65, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    y = compiled(x)
    y_ref = eager(x_ref)
    assert y.shape == (2, 10)
    tol = dict(rtol=1e-9, atol=0)
    torch.testing.assert_close(y, y_ref, **tol)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9,
                               atol=1e-9 * x_ref.grad.abs().max().item())
    for (name, p), p_ref in zip(model.named_parameters(), eager.parameters()):
        scale = p_ref.grad.abs().max().item()
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-9 * scale, msg=name)
    for (name, b), b_ref in zip(model.named_buffers(), eager.buffers()):  # BN running stats
        torch.testing.assert_close(b, b_ref, **tol, msg=name)
