#pragma once
// Argument checks and shape arithmetic for every involution op, shared by every dispatch key
// (CPU, CUDA, Meta). This is the one place that knows the conv output-size formula.
//
// Sizes are c10::SymInt so the Meta (fake) kernels can run under torch.compile/torch.export
// with symbolic shapes; with real tensors they are plain integers.
//
// `dims` is the number of spatial axes (2 for involution2d, 3 for involution3d).

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <vector>

#include "geometry.h"

namespace involution {
namespace detail {

// The stride, padding and dilation of a call, one element per spatial axis, as the op's schema
// passes them. A view: it lives as long as the call's arguments.
struct Window {
  at::IntArrayRef stride, padding, dilation;
};

// Throws c10::Error naming `name` if `t` is undefined (None in Python). The autograd and
// autocast kernels call it first: they run before the device kernels' checks and would otherwise
// fail with "tensor does not have a device", naming no argument.
inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": expected ", name,
              " to be a tensor, but got None (an undefined tensor)");
}

// Output sizes (B, C, O...) of the forward op; throws c10::Error naming what was expected and
// what came if any argument is invalid.
std::vector<c10::SymInt> check_forward(const char* op, int64_t dims, const at::Tensor& input,
                                       const at::Tensor& weight, const Window& window);

// Sizes (B, C, I...) of the input gradient.
std::vector<c10::SymInt> check_backward_input(const char* op, int64_t dims,
                                              const at::Tensor& grad_output,
                                              const at::Tensor& weight,
                                              c10::SymIntArrayRef input_size, const Window& window);

// Sizes (B, G, K..., O...) of the weight gradient.
std::vector<c10::SymInt> check_backward_weight(const char* op, int64_t dims,
                                               const at::Tensor& grad_output,
                                               const at::Tensor& input, at::IntArrayRef kernel_size,
                                               int64_t groups, const Window& window);

// The fused ops: output sizes (B, C, O...) and the number of groups G of
// fused_involution{2,3}d(input, reduced, span_weight, span_bias, kernel_size, window), where
// reduced is (B, R, O...), span_weight (G * taps, R, 1...) as nn.Conv{2,3}d stores a 1x1 conv's
// weight, and span_bias (G * taps) or undefined.
struct FusedSizes {
  std::vector<c10::SymInt> output;
  c10::SymInt groups;
};
FusedSizes check_fused_forward(const char* op, int64_t dims, const at::Tensor& input,
                               const at::Tensor& reduced, const at::Tensor& span_weight,
                               const std::optional<at::Tensor>& span_bias,
                               at::IntArrayRef kernel_size, const Window& window);

// The same checks for the fused backward, and that grad_output is (B, C, O...).
FusedSizes check_fused_backward(const char* op, int64_t dims, const at::Tensor& grad_output,
                                const at::Tensor& input, const at::Tensor& reduced,
                                const at::Tensor& span_weight,
                                const std::optional<at::Tensor>& span_bias,
                                at::IntArrayRef kernel_size, const Window& window);

// The concrete geometry of a checked problem, for the kernels. `features` is (B, C, I...) and
// `weight_sizes` is (B, G, K..., O...); both must already have passed one of the checks above.
Geometry make_geometry(int64_t dims, at::IntArrayRef features, at::IntArrayRef weight_sizes,
                       const Window& window);

// The geometry of a checked fused problem: input (B, C, I...), output (B, C, O...).
Geometry make_fused_geometry(int64_t dims, at::IntArrayRef input, at::IntArrayRef output,
                             at::IntArrayRef kernel_size, int64_t groups, const Window& window);

}  // namespace detail
}  // namespace involution
