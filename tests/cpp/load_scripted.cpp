// Loads a TorchScript file saved from Python (tests/cpp/save_scripted_model.py) and checks that
// it gives the output Python recorded. It calls no function of the op library: it only includes
// the header, whose link anchor must keep the library linked (the test links with --as-needed).

#include <involution/involution.h>
#include <torch/script.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " scripted_involution.pt\n";
    return 2;
  }
  torch::jit::Module bundle = torch::jit::load(argv[1]);
  bundle.eval();
  const at::Tensor input = bundle.attr("input").toTensor();
  const at::Tensor expected = bundle.attr("expected").toTensor();
  const at::Tensor output = bundle.forward({input}).toTensor();
  const double diff = (output - expected).abs().max().item<double>();
  std::cout << "output " << output.sizes() << ", max |C++ - Python| = " << diff << "\n";
  const bool ok = output.sizes() == expected.sizes() && diff < 1e-5;
  std::cout << (ok ? "1 passed, 0 failed" : "0 passed, 1 failed") << "\n";
  return ok ? 0 : 1;
}
