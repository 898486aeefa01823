#pragma once
// Public C++ API of the involution op library.
//
// Each function calls the registered op through the PyTorch dispatcher, so C++ callers get the
// same device dispatch (CPU, CUDA), autograd (y.sum().backward() fills both gradients) and
// autocast as Python callers of torch.ops.involution.*.
//
//   input  (B, C, H, W), weight (B, G, KH, KW, OH, OW) with C % G == 0,
//   OH = (H + 2*padding - dilation*(KH-1) - 1) / stride + 1 (the conv2d formula; same for OW),
//   output (B, C, OH, OW):
//   out[b,c,i,j] = sum_{u,v} weight[b, c/(C/G), u, v, i, j]
//                            * input[b, c, i*sH - pH + u*dH, j*sW - pW + v*dW]  (zero outside).
//
// involution3d is the same with a depth axis: input (B, C, D, H, W),
// weight (B, G, KD, KH, KW, OD, OH, OW), output (B, C, OD, OH, OW).

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#if defined(_WIN32)
#if defined(INVOLUTION_BUILDING_LIBRARY)
#define INVOLUTION_API __declspec(dllexport)
#else
#define INVOLUTION_API __declspec(dllimport)
#endif
#else
#define INVOLUTION_API __attribute__((visibility("default")))
#endif

namespace involution {

// The library's version, major * 10000 + minor * 100 + patch.
INVOLUTION_API int64_t version();

namespace detail {
// Every program that includes this header references version(), so the linker keeps the op
// library even when the program calls none of its functions (e.g. one that only loads a
// TorchScript file using the ops); without it, --as-needed linking drops the library and
// loading fails with "Unknown builtin op: involution::involution2d".
#if defined(__GNUC__)
[[gnu::used]]
#endif
static int64_t (*const link_anchor)() = &version;
}  // namespace detail

INVOLUTION_API at::Tensor involution2d(const at::Tensor& input, const at::Tensor& weight,
                        at::IntArrayRef stride = {1, 1}, at::IntArrayRef padding = {0, 0},
                        at::IntArrayRef dilation = {1, 1});

INVOLUTION_API at::Tensor involution3d(const at::Tensor& input, const at::Tensor& weight,
                        at::IntArrayRef stride = {1, 1, 1}, at::IntArrayRef padding = {0, 0, 0},
                        at::IntArrayRef dilation = {1, 1, 1});

// Fused involution: the kernel is generated from `reduced` by a 1x1 "span" convolution where
// it is used, and never stored. Equal to
//   involution2d(input, conv2d(reduced, span_weight, span_bias).view(B, G, KH, KW, OH, OW),
//                stride, padding, dilation)
// with input (B, C, H, W), reduced (B, R, OH, OW) at the output size, span_weight
// (G * KH * KW, R, 1, 1) (a 1x1 conv's weight as torch::nn::Conv2d stores it; G is inferred from
// it and kernel_size), span_bias (G * KH * KW) or none. Differentiable in all four tensors; the
// backward recomputes the kernel instead of saving it.
INVOLUTION_API at::Tensor fused_involution2d(const at::Tensor& input, const at::Tensor& reduced,
                                             const at::Tensor& span_weight,
                                             const std::optional<at::Tensor>& span_bias,
                                             at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride = {1, 1},
                                             at::IntArrayRef padding = {0, 0},
                                             at::IntArrayRef dilation = {1, 1});

// The same with a depth axis: input (B, C, D, H, W), reduced (B, R, OD, OH, OW), span_weight
// (G * KD * KH * KW, R, 1, 1, 1).
INVOLUTION_API at::Tensor fused_involution3d(const at::Tensor& input, const at::Tensor& reduced,
                                             const at::Tensor& span_weight,
                                             const std::optional<at::Tensor>& span_bias,
                                             at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride = {1, 1, 1},
                                             at::IntArrayRef padding = {0, 0, 0},
                                             at::IntArrayRef dilation = {1, 1, 1});

namespace detail {

// The gradients of fused_involution2d/3d with respect to (input, reduced, span_weight,
// span_bias), those whose output_mask entry is set; the others come back as empty tensors (and
// span_bias's when there is no bias). A registered op, differentiable again through the
// unfused ops.
using FusedGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
INVOLUTION_API FusedGradients fused_involution2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& reduced,
    const at::Tensor& span_weight, const std::optional<at::Tensor>& span_bias,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 4> output_mask);
INVOLUTION_API FusedGradients fused_involution3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& reduced,
    const at::Tensor& span_weight, const std::optional<at::Tensor>& span_bias,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 4> output_mask);

}  // namespace detail

namespace detail {

// The gradients of involution2d, themselves registered ops (so double backward works).
// Gradient with respect to the input, of spatial size input_size (H, W).
INVOLUTION_API at::Tensor involution2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation);

// Gradient with respect to the weight, of kernel size (KH, KW) with `groups` groups.
INVOLUTION_API at::Tensor involution2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation);

// The gradients of involution3d; input_size is (D, H, W), kernel_size (KD, KH, KW).
INVOLUTION_API at::Tensor involution3d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation);

INVOLUTION_API at::Tensor involution3d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation);

}  // namespace detail
}  // namespace involution
