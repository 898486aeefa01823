"""Finds and loads the compiled op library, with a clear error when it is missing or stale."""

import importlib.machinery
import os

import torch

_LIBRARY_NAME = "_C"


def _library_path() -> str:
    package_dir = os.path.dirname(os.path.abspath(__file__))
    finder = importlib.machinery.FileFinder(
        package_dir,
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    spec = finder.find_spec(_LIBRARY_NAME)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"involution: the compiled op library ({_LIBRARY_NAME}*.so) is not in {package_dir}. "
            "Build and install it with `pip install --no-build-isolation .` from the source "
            "tree. If you did, you are probably importing the source checkout instead of the "
            "installed package: run from outside the repository, use the `pytest` entry point "
            "rather than `python -m pytest`, or install in editable mode (`pip install "
            "--no-build-isolation -e .`)."
        )
    return spec.origin


def _major_minor(version: str) -> tuple:
    return tuple(version.split("+")[0].split(".")[:2])


# The oldest torch whose stable ABI has every C shim the wheel's library uses.
OLDEST_TORCH = (2, 11)


def load() -> str:
    """Loads the op library into torch.ops.involution and returns its path."""
    try:
        from .version import torch_version as built_with
    except ImportError:
        built_with = None
    try:
        from .version import stable_abi
    except ImportError:
        stable_abi = False
    if stable_abi:
        installed = tuple(int(v) for v in _major_minor(torch.__version__))
        if installed < OLDEST_TORCH:
            raise ImportError(
                f"involution: the op library needs torch >= {OLDEST_TORCH[0]}.{OLDEST_TORCH[1]} "
                f"(PyTorch's stable ABI), but torch {torch.__version__} is installed.")
    elif built_with is not None and _major_minor(built_with) != _major_minor(torch.__version__):
        raise ImportError(
            f"involution: the op library was built against torch {built_with}, but torch "
            f"{torch.__version__} is installed. Rebuild it against this torch with "
            "`pip install --no-build-isolation --force-reinstall --no-deps .`."
        )
    path = _library_path()
    try:
        torch.ops.load_library(path)
    except OSError as e:
        raise ImportError(
            f"involution: failed to load the op library {path} with torch {torch.__version__} "
            f"(built against torch {built_with or 'unknown'}): {e}. Rebuild it against the "
            "installed torch with `pip install --no-build-isolation --force-reinstall "
            "--no-deps .`."
        ) from e
    return path
