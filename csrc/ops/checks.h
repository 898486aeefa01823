#pragma once
// Argument checks and shape arithmetic for every involution op, shared by every dispatch key
// (CPU, CUDA, Meta) and by both builds of the library: the one place that knows the conv
// output-size formula and words the error messages.
//
// The checks see a tensor as a TensorInfo: its sizes, dtype and device, with sizes of type
// `Int`: int64_t for the CPU and CUDA kernels (PyTorch's stable ABI in the wheel, the full
// libtorch in the CMake build), c10::SymInt for the CMake build's Meta kernels, so that they run
// under torch.compile/torch.export with symbolic shapes. This header is free of framework types;
// the SymInt instances are compiled only in the full-libtorch build.
//
// `dims` is the number of spatial axes (2 for involution2d, 3 for involution3d).

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "error.h"
#include "geometry.h"

namespace involution {
namespace detail {

using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

// The stride, padding and dilation of a call, one element per spatial axis, as the op's schema
// passes them. A view: it lives as long as the call's arguments.
struct Window {
  IntList stride, padding, dilation;
};

// What the checks read of a tensor; `defined` is false for None (an undefined tensor).
template <typename Int>
struct TensorInfo {
  bool defined = false;
  std::vector<Int> sizes;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  std::string device = "cpu";  // as torch prints it: "cpu", "cuda:0", "meta"

  int64_t dim() const { return static_cast<int64_t>(sizes.size()); }
};

// Throws naming `name` if the tensor is undefined (None in Python). The autograd and autocast
// kernels call it first: they run before the device kernels' checks and would otherwise fail
// with "tensor does not have a device", naming no argument.
inline void check_defined(const char* op, const char* name, bool defined) {
  INVOLUTION_CHECK(defined, op, ": expected ", name,
                   " to be a tensor, but got None (an undefined tensor)");
}

// Output sizes (B, C, O...) of the forward op; throws naming what was expected and what came if
// any argument is invalid.
template <typename Int>
std::vector<Int> check_forward(const char* op, int64_t dims, const TensorInfo<Int>& input,
                               const TensorInfo<Int>& weight, const Window& window);

// Sizes (B, C, I...) of the input gradient.
template <typename Int>
std::vector<Int> check_backward_input(const char* op, int64_t dims,
                                      const TensorInfo<Int>& grad_output,
                                      const TensorInfo<Int>& weight,
                                      torch::headeronly::HeaderOnlyArrayRef<Int> input_size,
                                      const Window& window);

// Sizes (B, G, K..., O...) of the weight gradient.
template <typename Int>
std::vector<Int> check_backward_weight(const char* op, int64_t dims,
                                       const TensorInfo<Int>& grad_output,
                                       const TensorInfo<Int>& input, IntList kernel_size,
                                       int64_t groups, const Window& window);

// The fused ops: output sizes (B, C, O...) and the number of groups G of
// fused_involution{2,3}d(input, reduced, span_weight, span_bias, kernel_size, window), where
// reduced is (B, R, O...), span_weight (G * taps, R, 1...) as nn.Conv{2,3}d stores a 1x1 conv's
// weight, and span_bias (G * taps) or undefined.
template <typename Int>
struct FusedSizes {
  std::vector<Int> output;
  Int groups;
};
template <typename Int>
FusedSizes<Int> check_fused_forward(const char* op, int64_t dims, const TensorInfo<Int>& input,
                                    const TensorInfo<Int>& reduced,
                                    const TensorInfo<Int>& span_weight,
                                    const TensorInfo<Int>& span_bias, IntList kernel_size,
                                    const Window& window);

// The same checks for the fused backward, and that grad_output is (B, C, O...).
template <typename Int>
FusedSizes<Int> check_fused_backward(const char* op, int64_t dims,
                                     const TensorInfo<Int>& grad_output,
                                     const TensorInfo<Int>& input, const TensorInfo<Int>& reduced,
                                     const TensorInfo<Int>& span_weight,
                                     const TensorInfo<Int>& span_bias, IntList kernel_size,
                                     const Window& window);

// The concrete geometry of a checked problem, for the kernels. `features` is (B, C, I...) and
// `weight_sizes` is (B, G, K..., O...); both must already have passed one of the checks above.
Geometry make_geometry(int64_t dims, IntList features, IntList weight_sizes, const Window& window);

// The geometry of a checked fused problem: input (B, C, I...), output (B, C, O...).
Geometry make_fused_geometry(int64_t dims, IntList input, IntList output, IntList kernel_size,
                             int64_t groups, const Window& window);

}  // namespace detail
}  // namespace involution
