// CUDA kernels of the involution2d and involution3d ops (one implementation, `Dims` axes): the
// same checks and shape arithmetic as every other dispatch key (checks.h), then the kernels of
// involution_kernels.cuh on the current stream of the tensors' device.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "../checks.h"
#include "../op_family.h"
#include "involution_kernels.cuh"

namespace involution {
namespace cuda {
namespace {

using detail::OpFamily;

at::Tensor empty_with_sizes(const std::vector<c10::SymInt>& sizes, const at::Tensor& like) {
  return at::empty(C10_AS_INTARRAYREF_SLOW(sizes), like.options());
}

void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": expected ", name, " to be a CUDA tensor, but got one on ",
              t.device());
}

int64_t blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  // The kernels loop over the index space in grid strides, so capping the grid is safe.
  return std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max());
}

// Calls body(static_cast<T*>(nullptr)) with T the element type of a's dtype.
template <typename Launch>
void launch(const at::Tensor& a, const Launch& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "involution_cuda",
                                  [&] { body(static_cast<scalar_t*>(nullptr)); });
}

template <int64_t Dims>
at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = OpFamily<Dims>::name;
  const auto sizes = detail::check_forward(op, Dims, input, weight, stride, padding, dilation);
  check_cuda(op, "input", input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = empty_with_sizes(sizes, input);
  if (output.numel() == 0) return output;

  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const Geometry g = detail::make_geometry(Dims, x.sizes(), w.sizes(), stride, padding, dilation);
  const int64_t threads = g.batch * g.groups * g.out_volume();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  launch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    forward_kernel<T, at::opmath_type<T>><<<blocks_for(threads), kThreads, 0, stream>>>(
        g, x.const_data_ptr<T>(), w.const_data_ptr<T>(), output.mutable_data_ptr<T>(), threads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

template <int64_t Dims>
at::Tensor backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                               c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = OpFamily<Dims>::backward_input_name;
  const auto sizes = detail::check_backward_input(op, Dims, grad_output, weight, input_size, stride,
                                                  padding, dilation);
  check_cuda(op, "grad_output", grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = empty_with_sizes(sizes, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  if (grad_output.numel() == 0) return grad_input.zero_();

  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  const Geometry g =
      detail::make_geometry(Dims, grad_input.sizes(), w.sizes(), stride, padding, dilation);
  const int64_t threads = g.batch * g.groups * g.in_volume();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  launch(gy, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    backward_input_kernel<T, at::opmath_type<T>><<<blocks_for(threads), kThreads, 0, stream>>>(
        g, gy.const_data_ptr<T>(), w.const_data_ptr<T>(), grad_input.mutable_data_ptr<T>(),
        threads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

template <int64_t Dims>
at::Tensor backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                at::IntArrayRef kernel_size, int64_t groups, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = OpFamily<Dims>::backward_weight_name;
  const auto sizes = detail::check_backward_weight(op, Dims, grad_output, input, kernel_size,
                                                   groups, stride, padding, dilation);
  check_cuda(op, "grad_output", grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_weight = empty_with_sizes(sizes, grad_output);
  if (grad_weight.numel() == 0) return grad_weight;
  if (grad_output.numel() == 0) return grad_weight.zero_();

  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const Geometry g =
      detail::make_geometry(Dims, x.sizes(), grad_weight.sizes(), stride, padding, dilation);
  const int64_t threads = g.batch * g.groups * g.out_volume();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool resident = g.channels_per_group() <= kChannelBlock;
  launch(gy, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Acc = at::opmath_type<T>;
    const auto kernel =
        resident ? backward_weight_kernel<T, Acc, true> : backward_weight_kernel<T, Acc, false>;
    kernel<<<blocks_for(threads), kThreads, 0, stream>>>(
        g, gy.const_data_ptr<T>(), x.const_data_ptr<T>(), grad_weight.mutable_data_ptr<T>(),
        threads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_weight;
}

// The benchmark's baseline (the official CuPy kernel's design); not used by the library.
at::Tensor naive_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const char* op = "involution2d_naive";
  const auto sizes = detail::check_forward(op, 2, input, weight, stride, padding, dilation);
  check_cuda(op, "input", input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = empty_with_sizes(sizes, input);
  if (output.numel() == 0) return output;

  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const Geometry g = detail::make_geometry(2, x.sizes(), w.sizes(), stride, padding, dilation);
  const int64_t threads = output.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  launch(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    naive_forward_kernel<T, at::opmath_type<T>><<<blocks_for(threads), kThreads, 0, stream>>>(
        g, x.const_data_ptr<T>(), w.const_data_ptr<T>(), output.mutable_data_ptr<T>(), threads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(involution, CUDA, m) {
  m.impl("involution2d", TORCH_FN(cuda::forward_cuda<2>));
  m.impl("_involution2d_backward_input", TORCH_FN(cuda::backward_input_cuda<2>));
  m.impl("_involution2d_backward_weight", TORCH_FN(cuda::backward_weight_cuda<2>));
  m.impl("involution3d", TORCH_FN(cuda::forward_cuda<3>));
  m.impl("_involution3d_backward_input", TORCH_FN(cuda::backward_input_cuda<3>));
  m.impl("_involution3d_backward_weight", TORCH_FN(cuda::backward_weight_cuda<3>));
  m.impl("_involution2d_naive", TORCH_FN(cuda::naive_forward_cuda));
}

}  // namespace involution
