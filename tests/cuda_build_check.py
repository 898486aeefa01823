"""Checks an installed CUDA build of the op library on a machine that may have no GPU: the CUDA
kernels were compiled in, for the architectures asked for, and are registered for every op."""

import os
import subprocess
import sys

import torch

import involution
from involution import version

OPS = ["involution2d", "_involution2d_backward_input", "_involution2d_backward_weight",
       "involution3d", "_involution3d_backward_input", "_involution3d_backward_weight",
       "fused_involution2d", "_fused_involution2d_backward", "fused_involution3d",
       "_fused_involution3d_backward"]


def main() -> int:
    print(f"involution {involution.__version__} at {involution.library_path}")
    print(f"built against torch {version.torch_version}, running torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()})")
    assert torch.version.cuda is not None, "this check needs the CUDA build of torch"
    assert version.cuda, "the library was built without its CUDA kernels"
    missing = [op for op in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"involution::{op}", "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing}"
    # The library carries device code: a .nv_fatbin section, with a cubin for each architecture
    # of TORCH_CUDA_ARCH_LIST (each records the ptxas options it was assembled with).
    sections = subprocess.run(["readelf", "-SW", involution.library_path], check=True,
                              capture_output=True, text=True).stdout
    assert ".nv_fatbin" in sections, "no device code (.nv_fatbin) in the library"
    with open(involution.library_path, "rb") as f:
        library = f.read()
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";")
    for arch in filter(None, arch_list.split(";")):
        sm = "sm_" + arch.strip().replace("+PTX", "").replace(".", "")
        assert f"-arch {sm} ".encode() in library, f"no cubin for {sm} in the library"
        print(f"device code for {sm}: present")
    print(f"CUDA kernels registered for all {len(OPS)} ops")
    if getattr(version, "stable_abi", False):  # the wheel's library: the stable C shims only
        undefined = subprocess.run(["nm", "-DC", "--undefined-only", involution.library_path],
                                   check=True, capture_output=True, text=True).stdout
        bad = [line for line in undefined.splitlines()
               if any(ns in line for ns in ("c10::", "at::", "torch::"))]
        assert not bad, "symbols outside the stable ABI:\n" + "\n".join(bad)
        print("nm: no c10::, at:: or torch:: symbol")
    return 0


if __name__ == "__main__":
    sys.exit(main())
