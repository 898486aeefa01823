"""Official (mmcls) RedNet checkpoints -> :class:`involution.models.RedNet` state_dicts."""

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["convert_official_state_dict"]

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# BN buffer that torch fills in itself when a state_dict lacks it (older checkpoints).
_OPTIONAL = "num_batches_tracked"


def _table(pairs) -> Dict[str, str]:
    """Expands ("official.", "ours.", "bn") rows to one entry per BN tensor."""
    table = {}
    for official, ours, kind in pairs:
        if kind == "bn":
            table.update({official + "." + t: ours + "." + t for t in _BN})
        else:
            table.update({official + "." + t: ours + "." + t for t in kind})
    return table


_W, _WB = ("weight",), ("weight", "bias")

_STEM = _table([
    ("backbone.stem.0.conv", "stem.conv1", _W),
    ("backbone.stem.0.bn", "stem.bn1", "bn"),
    ("backbone.stem.1.conv1.conv", "stem.involution.reduce", _W),
    ("backbone.stem.1.conv1.bn", "stem.involution.bn", "bn"),
    ("backbone.stem.1.conv2.conv", "stem.involution.span", _WB),
    ("backbone.stem.2", "stem.bn2", "bn"),
    ("backbone.stem.4.conv", "stem.conv2", _W),
    ("backbone.stem.4.bn", "stem.bn3", "bn"),
])
_HEAD = _table([("head.fc", "fc", _WB)])
_BLOCK = _table([  # relative to backbone.layerN.M / layerN.M
    ("conv1", "conv1", _W),
    ("bn1", "bn1", "bn"),
    ("conv2.conv1.conv", "involution.reduce", _W),
    ("conv2.conv1.bn", "involution.bn", "bn"),
    ("conv2.conv2.conv", "involution.span", _WB),
    ("bn2", "bn2", "bn"),
    ("conv3", "conv3", _W),
    ("bn3", "bn3", "bn"),
])
_DOWNSAMPLE = _table([
    ("downsample.0", "downsample.0", _W),
    ("downsample.1", "downsample.1", "bn"),
])
_BLOCK_KEY = re.compile(r"^backbone\.layer([1-4])\.(0|[1-9][0-9]*)\.(.+)$")


def _map_key(key: str) -> Optional[str]:
    if key in _STEM:
        return _STEM[key]
    if key in _HEAD:
        return _HEAD[key]
    match = _BLOCK_KEY.match(key)
    if match:
        layer, block, rest = match.groups()
        table = _DOWNSAMPLE if rest.startswith("downsample.") and block == "0" else _BLOCK
        if rest in table:
            return f"layer{layer}.{block}.{table[rest]}"
    return None


def _listing(keys: List[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = len(keys) - limit
    return f"{shown} (and {more} more)" if more > 0 else shown


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Renames the keys of an official RedNet checkpoint (mmcls ``ImageClassifier``, the
    published ImageNet models of d-li14/involution) to those of :class:`RedNet`.

    Accepts the state_dict itself (``backbone.stem.0.conv.weight``, ...,
    ``backbone.layer1.0.conv2.conv1.conv.weight``, ..., ``head.fc.weight``), a whole checkpoint
    dict holding it under ``"state_dict"``, and keys prefixed with ``module.``
    (DataParallel). The tensors are passed through untouched (same objects; no copy, no
    dtype or device change). The depth is whatever the checkpoint holds; load the result into
    the matching model::

        model = involution.models.rednet50()
        ckpt = torch.load("rednet50.pth", map_location="cpu")
        model.load_state_dict(convert_official_state_dict(ckpt))  # strict

    Raises:
        ValueError: naming the first few keys that are not part of an official RedNet
            classifier, or that are missing from it (every stem, block and head tensor
            must be present; ``num_batches_tracked`` may be absent, as torch fills it in).
    """
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state_dict (a mapping), got {type(state_dict).__name__}")

    converted: "OrderedDict[str, Any]" = OrderedDict()
    unknown: List[str] = []
    blocks: Dict[int, int] = {}  # layer -> highest block index seen
    for key, value in state_dict.items():
        official = key[len("module."):] if key.startswith("module.") else key
        ours = _map_key(official)
        if ours is None:
            unknown.append(key)
            continue
        if ours in converted:
            raise ValueError(f"key {key!r} appears twice (with and without 'module.')")
        converted[ours] = value
        match = _BLOCK_KEY.match(official)
        if match:
            layer, block = int(match.group(1)), int(match.group(2))
            blocks[layer] = max(blocks.get(layer, -1), block)
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of an official RedNet classifier "
            f"checkpoint: {_listing(unknown)}"
        )

    expected = dict(_STEM)
    expected.update(_HEAD)
    for layer in (1, 2, 3, 4):
        for block in range(blocks.get(layer, 0) + 1):
            rows = dict(_BLOCK, **_DOWNSAMPLE) if block == 0 else _BLOCK
            expected.update({f"backbone.layer{layer}.{block}.{k}": f"layer{layer}.{block}.{v}"
                             for k, v in rows.items()})
    missing = [k for k, ours in expected.items()
               if ours not in converted and not k.endswith(_OPTIONAL)]
    if missing:
        raise ValueError(
            f"{len(missing)} key(s) of an official RedNet classifier checkpoint are missing: "
            f"{_listing(missing)}"
        )
    return converted
