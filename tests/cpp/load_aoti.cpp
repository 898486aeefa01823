// Runs an AOTInductor package of an exported Involution2d (tests/cpp/save_scripted_model.py)
// from C++ and checks it against the output Python recorded. The compiled model calls the
// involution ops through the dispatcher, so the op library must be loaded: including the
// header keeps it linked.

#include <involution/involution.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " scripted_involution.pt involution.pt2\n";
    return 2;
  }
  // The TorchScript bundle carries the input and Python's output for the same model.
  torch::jit::Module bundle = torch::jit::load(argv[1]);
  const at::Tensor input = bundle.attr("input").toTensor();
  const at::Tensor expected = bundle.attr("expected").toTensor();

  torch::inductor::AOTIModelPackageLoader loader(argv[2]);
  const std::vector<at::Tensor> outputs = loader.run({input});
  const double diff = (outputs.at(0) - expected).abs().max().item<double>();
  std::cout << "AOTInductor output " << outputs.at(0).sizes()
            << ", max |C++ - Python| = " << diff << "\n";
  const bool ok = outputs.at(0).sizes() == expected.sizes() && diff < 1e-4;
  std::cout << (ok ? "1 passed, 0 failed" : "0 passed, 1 failed") << "\n";
  return ok ? 0 : 1;
}
