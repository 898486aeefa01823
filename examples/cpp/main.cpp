// Uses the involution op from C++: the functional API with autograd, and (given a path) a
// TorchScript model saved from Python that uses the op.

#include <involution/involution.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  std::cout << "involution " << involution::version() << ", torch " << TORCH_VERSION << "\n";

  // x: (B, C, H, W) = (2, 8, 15, 17); weight: (B, G, KH, KW, OH, OW) with G = 2 groups,
  // a 3x3 kernel, stride 2 and padding 1: OH = (15 + 2 - 2 - 1) / 2 + 1 = 8, OW = 9.
  torch::manual_seed(0);
  auto x = torch::randn({2, 8, 15, 17}, torch::requires_grad());
  auto w = torch::randn({2, 2, 3, 3, 8, 9}, torch::requires_grad());
  auto y = involution::involution2d(x, w, /*stride=*/{2, 2}, /*padding=*/{1, 1},
                                    /*dilation=*/{1, 1});
  y.square().sum().backward();
  std::cout << "output " << y.sizes() << ", grad input " << x.grad().sizes() << ", grad weight "
            << w.grad().sizes() << "\n";

  if (argc > 1) {
    torch::jit::Module model = torch::jit::load(argv[1]);
    model.eval();
    const auto input = model.attr("input").toTensor();
    const auto output = model.forward({input}).toTensor();
    const double diff = (output - model.attr("expected").toTensor()).abs().max().item<double>();
    std::cout << "scripted model: output " << output.sizes() << ", max |C++ - Python| = " << diff
              << "\n";
    return diff < 1e-5 ? 0 : 1;
  }
  return 0;
}
