"""A freshly built RedNet follows the official initialisation (zero_init_residual=True): the
last BatchNorm of every bottleneck starts at zero, and the network's eval-mode logits are
finite (they overflowed to NaN by the fourth stage before)."""

import torch

from involution.models import rednet26, rednet50

# --- A fresh RedNet ---------------------------------------------------------------------------

def test_fresh_rednet50_eval_gives_finite_logits():
    torch.manual_seed(0)
    model = rednet50().eval()
    assert all(not b.bn3.weight.detach().any() for layer in
               (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert torch.isfinite(logits).all()


def test_zero_init_residual_can_be_turned_off():
    model = rednet26(zero_init_residual=False)
    assert all(b.bn3.weight.detach().eq(1).all() for b in model.layer1)
