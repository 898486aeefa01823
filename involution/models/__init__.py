"""RedNet-26/38/50/101/152 (Li et al., CVPR 2021) built on the involution op, and a converter
for the official (mmcls) checkpoints.

    import torch, involution
    model = involution.models.rednet50()              # 15.54M parameters
    ckpt = torch.load("rednet50.pth", map_location="cpu")
    model.load_state_dict(involution.models.convert_official_state_dict(ckpt))
"""

from .convert import convert_official_state_dict
from .rednet import RedNet, rednet26, rednet38, rednet50, rednet101, rednet152

__all__ = [
    "RedNet",
    "convert_official_state_dict",
    "rednet26",
    "rednet38",
    "rednet50",
    "rednet101",
    "rednet152",
]
