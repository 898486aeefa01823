"""Involution (Li et al., CVPR 2021) as compiled PyTorch custom ops.

    import involution
    y = involution.functional.involution2d(x, kernel, stride=1, padding=3)
    layer = involution.Involution2d(64, 64, kernel_size=7, groups=4, reduce_ratio=4)
    layer3d = involution.Involution3d(16, 16, kernel_size=3, padding=1, groups=2)
    model = involution.models.rednet50()
    involution.onnx.export(model.eval(), (torch.randn(1, 3, 224, 224),))  # ONNX, standard ops

The ops are registered as torch.ops.involution.involution2d and involution3d, and their fused
forms fused_involution2d and fused_involution3d, which generate the kernel from the reduced
tensor inside the op (CPU and CUDA kernels, C++ autograd, meta kernels for
torch.compile/torch.export, autocast).
"""

from . import _library, _registrations

library_path = _library.load()
_registrations.register()

from . import functional, models, onnx  # noqa: E402  (.onnx imports neither onnx nor onnxscript)
from .functional import (  # noqa: E402
    fused_involution2d,
    fused_involution3d,
    involution2d,
    involution3d,
)
from .modules import Involution2d, Involution3d  # noqa: E402

try:
    from .version import __version__  # noqa: E402
except ImportError:  # a source checkout that was never built
    __version__ = "unknown"

__all__ = [
    "Involution2d",
    "Involution3d",
    "functional",
    "fused_involution2d",
    "fused_involution3d",
    "involution2d",
    "involution3d",
    "library_path",
    "models",
    "onnx",
    "__version__",
]
