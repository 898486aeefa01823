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

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

namespace involution {

at::Tensor involution2d(const at::Tensor& input, const at::Tensor& weight,
                        at::IntArrayRef stride = {1, 1}, at::IntArrayRef padding = {0, 0},
                        at::IntArrayRef dilation = {1, 1});

namespace detail {

// The gradients of involution2d, themselves registered ops (so double backward works).
// Gradient with respect to the input, of spatial size input_size (H, W).
at::Tensor involution2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation);

// Gradient with respect to the weight, of kernel size (KH, KW) with `groups` groups.
at::Tensor involution2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation);

}  // namespace detail
}  // namespace involution
