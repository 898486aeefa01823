"""Involution (Li et al., CVPR 2021) as compiled PyTorch custom ops.

    import involution
    y = involution.functional.involution2d(x, kernel, stride=1, padding=3)
    layer = involution.Involution2d(64, 64, kernel_size=7, groups=4, reduce_ratio=4)

The ops are registered as torch.ops.involution.* (CPU kernels, C++ autograd, meta kernels for
torch.compile/torch.export, CPU autocast).
"""

from . import _library

library_path = _library.load()

from . import functional  # noqa: E402
from .functional import involution2d  # noqa: E402
from .modules import Involution2d  # noqa: E402
from . import models  # noqa: E402

try:
    from .version import __version__  # noqa: E402
except ImportError:  # a source checkout that was never built
    __version__ = "unknown"

__all__ = [
    "Involution2d", "functional", "involution2d", "library_path", "models", "__version__"
]
