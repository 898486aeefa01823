"""Saves an Involution2d for the C++ round trips (tests/cpp/load_scripted.cpp, examples/cpp):

    save_scripted_model.py OUT.pt [OUT.pt2]

OUT.pt: the module scripted with torch.jit.script, with an input and the output Python computes
for it as buffers ("input", "expected"). OUT.pt2 (optional): the same module exported with
torch.export and compiled ahead of time by AOTInductor into a package that C++ runs with
torch::inductor::AOTIModelPackageLoader.
"""

import sys

import torch

import involution


class Bundle(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, x: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("input", x)
        self.register_buffer("expected", model(x).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


torch.manual_seed(0)
model = involution.Involution2d(8, 16, kernel_size=5, padding=2, stride=2, groups=4,
                                reduce_ratio=2).eval()
x = torch.randn(2, 8, 15, 17)  # odd size with stride 2: the seed module crashes here
torch.jit.save(torch.jit.script(Bundle(model, x)), sys.argv[1])
print("saved", sys.argv[1])

if len(sys.argv) > 2:
    exported = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(exported, package_path=sys.argv[2])
    # The package runs in Python too, with the same numbers.
    loaded = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    print("saved", path)
