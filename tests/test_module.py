"""Involution2d: a drop-in for the seed module, right where the seed is wrong, scriptable."""

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import SeedInvolution2d, involution2d_reference, output_extent

from involution import Involution2d

# Configurations the seed handles: "same" padding and sizes divisible by the stride.
SEED_CONFIGS = [
    dict(in_channels=16, out_channels=16, kernel_size=7, groups=4, reduce_ratio=4),
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, stride=2, groups=2),
    dict(in_channels=8, out_channels=8, kernel_size=(3, 5), padding=(1, 2), bias=True),
    dict(in_channels=8, out_channels=12, kernel_size=7, dilation=2, padding=6, groups=3,
         reduce_ratio=2),
    dict(in_channels=4, out_channels=8),  # the seed's defaults: 7x7, padding 3, 1 group
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=0, force_shape_match=True),
]


def copy_into_ours(seed, **config):
    ours = Involution2d(**config)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("config", SEED_CONFIGS, ids=lambda c: str(sorted(c.items())))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_seed_state_dict_loads_and_gives_the_same_output(config, train):
    torch.manual_seed(0)
    seed = SeedInvolution2d(**config)
    for p in seed.parameters():  # away from the trivial initial values
        nn.init.normal_(p, std=0.5)
    seed.sigma_mapping[0].running_mean.normal_()
    seed.sigma_mapping[0].running_var.uniform_(0.5, 2)
    ours = copy_into_ours(seed, **config)
    assert set(ours.state_dict()) == set(seed.state_dict())
    seed.train(train)
    ours.train(train)
    x = torch.randn(2, config["in_channels"], 16, 16)
    expected = seed(x)
    torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)
    if train:  # the BN running statistics moved the same way
        torch.testing.assert_close(ours.sigma_mapping[0].running_mean,
                                   seed.sigma_mapping[0].running_mean)


def kernel_branch(module, x):
    return module.span_mapping(module.sigma_mapping(module.reduce_mapping(x)))


# (config, input size, how ours must pool the kernel branch): cases where the seed crashes.
SEED_FAILURES = [
    ("odd size, stride 2", dict(kernel_size=3, padding=1, stride=2), (15, 13),
     lambda x, s, o: F.avg_pool2d(x, s, s, ceil_mode=True)),
    ("even kernel", dict(kernel_size=4, padding=1), (12, 12),
     lambda x, s, o: F.adaptive_avg_pool2d(x, o)),
    ("non-square kernel, same padding on one axis only", dict(kernel_size=(3, 5), padding=1),
     (10, 10), lambda x, s, o: F.adaptive_avg_pool2d(x, o)),
    ("no padding", dict(kernel_size=3, padding=0), (10, 9),
     lambda x, s, o: F.adaptive_avg_pool2d(x, o)),
    ("force_shape_match with stride 2", dict(kernel_size=3, padding=1, stride=2,
                                             force_shape_match=True), (16, 16),
     lambda x, s, o: F.adaptive_avg_pool2d(x, o)),
]


@pytest.mark.parametrize("config,size,pool", [c[1:] for c in SEED_FAILURES],
                         ids=[c[0] for c in SEED_FAILURES])
def test_right_where_the_seed_fails(config, size, pool):
    torch.manual_seed(0)
    config = dict(in_channels=8, out_channels=8, groups=2, **config)
    seed = SeedInvolution2d(**config)
    ours = copy_into_ours(seed, **config).eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    ours.double()
    with pytest.raises(RuntimeError):
        seed.double().eval()(x)
    out = tuple(output_extent(size[i], ours.kernel_size[i], ours.stride[i], ours.padding[i],
                              ours.dilation[i]) for i in range(2))
    kernel = kernel_branch(ours, pool(x, ours.stride, out)).view(2, 2, *ours.kernel_size, *out)
    expected = involution2d_reference(x, kernel, ours.stride, ours.padding, ours.dilation)
    y = ours(x)
    assert y.shape == (2, 8, *out)
    torch.testing.assert_close(y, expected)


def test_misspelt_keyword_warns_naming_it():
    with pytest.warns(UserWarning, match="kernel_Size"):
        m = Involution2d(8, 8, kernel_Size=3)
    assert m.kernel_size == (7, 7)  # ignored, as the seed does


def test_repr_names_the_configuration():
    text = repr(Involution2d(16, 32, kernel_size=(3, 5), padding=(1, 2), groups=4, reduce_ratio=4))
    assert ("Involution2d(\n  16, 32, kernel_size=(3, 5), stride=(1, 1), padding=(1, 2), "
            "dilation=(1, 1), groups=4, reduce_ratio=4, bias=False") in text
    assert "(reduce_mapping): Conv2d(16, 8" in text


@pytest.mark.parametrize("kwargs,message", [
    (dict(in_channels=8, out_channels=6, groups=4), r"out_channels \(6\) must be divisible by "
                                                     r"groups \(4\)"),
    (dict(in_channels=0, out_channels=8), r"in_channels must be a positive int, got 0"),
    (dict(in_channels=8, out_channels=8, reduce_ratio=16), r"reduce_ratio \(16\) must not exceed"),
    (dict(in_channels=8, out_channels=8, stride=0), r"stride must be >= 1"),
    (dict(in_channels=8, out_channels=8, padding=-1), r"padding must be >= 0"),
    (dict(in_channels=8, out_channels=8, kernel_size=(3, 3, 3)), r"kernel_size must be an int "
                                                                  r"or a sequence of 2 ints"),
])
def test_constructor_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Involution2d(**kwargs)


def test_forward_rejects_bad_input():
    m = Involution2d(8, 8, kernel_size=7, padding=0)
    with pytest.raises(ValueError, match=r"expected a 4-D input \(B, C, H, W\), but got a 3-D"):
        m(torch.randn(8, 10, 10))
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        m(torch.randn(1, 8, 5, 5))


def test_torchscript_round_trip():
    torch.manual_seed(0)
    model = Involution2d(8, 16, kernel_size=5, padding=2, stride=2, groups=4, reduce_ratio=2)
    model.eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for size in [(16, 16), (15, 17)]:
        x = torch.randn(2, 8, *size)
        torch.testing.assert_close(loaded(x), model(x))
    assert "involution::involution2d" in loaded.code or "involution2d" in loaded.code
