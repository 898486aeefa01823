// CUDA kernels of the involution2d and involution3d ops (one implementation, `Dims` axes): the
// same checks and preparation as the CPU kernels (prepare.h), then the kernels of
// involution_kernels.cuh on the current stream of the tensors' device.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../op_family.h"
#include "../prepare.h"
#include "involution_kernels.cuh"

namespace involution {
namespace cuda {
namespace {

using detail::OpFamily;

int64_t blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  // The kernels loop over the index space in grid strides, so capping the grid is safe.
  return std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max());
}

// Launches Kernel<T>(p.g, a, b, out, threads) over `threads` threads on the current stream, with
// T the element type of the operands. The caller holds a device guard for their device.
template <template <typename> class Kernel>
void launch(const detail::Prepared& p, int64_t threads) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.a.scalar_type(), "involution_cuda", [&] {
        Kernel<scalar_t>::get()<<<blocks_for(threads), kThreads, 0, stream>>>(
            p.g, p.a.const_data_ptr<scalar_t>(), p.b.const_data_ptr<scalar_t>(),
            p.out.mutable_data_ptr<scalar_t>(), threads);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// The kernel instantiations, accumulating in float for the half types.
template <typename T>
struct Forward {
  static auto get() { return forward_kernel<T, at::opmath_type<T>>; }
};
template <typename T>
struct BackwardInput {
  static auto get() { return backward_input_kernel<T, at::opmath_type<T>>; }
};
template <typename T>
struct BackwardWeightResident {  // the group's grad_output stays in registers (C/G <= 16)
  static auto get() { return backward_weight_kernel<T, at::opmath_type<T>, true>; }
};
template <typename T>
struct BackwardWeightStreamed {
  static auto get() { return backward_weight_kernel<T, at::opmath_type<T>, false>; }
};
template <typename T>
struct NaiveForward {
  static auto get() { return naive_forward_kernel<T, at::opmath_type<T>>; }
};

template <int64_t Dims>
at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  const auto p =
      detail::prepare_forward(OpFamily<Dims>::name, Dims, input, weight, stride, padding, dilation);
  if (p.work) launch<Forward>(p, p.g.batch * p.g.groups * p.g.out_volume());
  return p.out;
}

template <int64_t Dims>
at::Tensor backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                               c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const auto p =
      detail::prepare_backward_input(OpFamily<Dims>::backward_input_name, Dims, grad_output, weight,
                                     input_size, stride, padding, dilation);
  if (p.work) launch<BackwardInput>(p, p.g.batch * p.g.groups * p.g.in_volume());
  return p.out;
}

template <int64_t Dims>
at::Tensor backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                at::IntArrayRef kernel_size, int64_t groups, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const auto p =
      detail::prepare_backward_weight(OpFamily<Dims>::backward_weight_name, Dims, grad_output,
                                      input, kernel_size, groups, stride, padding, dilation);
  if (!p.work) return p.out;
  const int64_t threads = p.g.batch * p.g.groups * p.g.out_volume();
  if (p.g.channels_per_group() <= kChannelBlock) {
    launch<BackwardWeightResident>(p, threads);
  } else {
    launch<BackwardWeightStreamed>(p, threads);
  }
  return p.out;
}

// The benchmark's baseline (the official CuPy kernel's design); not used by the library.
at::Tensor naive_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  const auto p =
      detail::prepare_forward("involution2d_naive", 2, input, weight, stride, padding, dilation);
  if (p.work) launch<NaiveForward>(p, p.out.numel());
  return p.out;
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
