#pragma once
// CPU implementations shared by involution2d and involution3d (`dims` spatial axes).
// They check and prepare their arguments (prepare.h) and run the kernels of
// involution_kernels.h in parallel over rows.

#include <ATen/core/Tensor.h>

namespace involution {
namespace cpu {

at::Tensor forward(const char* op, int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

at::Tensor backward_input(const char* op, int64_t dims, const at::Tensor& grad_output,
                          const at::Tensor& weight, c10::SymIntArrayRef input_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation);

at::Tensor backward_weight(const char* op, int64_t dims, const at::Tensor& grad_output,
                           const at::Tensor& input, at::IntArrayRef kernel_size, int64_t groups,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation);

}  // namespace cpu
}  // namespace involution
