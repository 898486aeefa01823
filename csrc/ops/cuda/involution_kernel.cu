// CUDA kernels of the involution2d and involution3d ops (one implementation, `Dims` axes): the
// shared checks and preparation (prepare.h) first, then, on the device of the result and its
// current stream, the tiled kernels where they apply (tiled_kernels_apply: K = 3 or 7, stride
// 1 or 2, dilation 1 along height and width) and the generic kernels otherwise.

#include <torch/csrc/stable/library.h>

#include <algorithm>
#include <type_traits>

#include "../dtypes.h"
#include "../op_names.h"
#include "../prepare.h"
#include "backward_input.cuh"
#include "backward_weight.cuh"
#include "forward.cuh"
#include "stable_cuda.h"

namespace involution {
namespace cuda {
namespace {

template <int64_t Dims>
using OpFamily = detail::OpNames<Dims>;
using detail::Tensor;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

// Blocks for `threads` threads: enough to cover them, at most 2^30 threads in all (the grid-stride
// loops of the kernels then cover the rest).
unsigned blocks_for(int64_t threads) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((threads + kThreads - 1) / kThreads, 1, (int64_t(1) << 30) / kThreads));
}

// A tiled kernel over every slab, in launches of 32-bit index spaces.
template <typename Kernel, typename A, typename B, typename Out>
void launch_tiled(const Kernel& kernel, const detail::Prepared& p, int32_t items, const A* a,
                  const B* b, Out* out) {
  const auto stream = current_stream();
  for_each_slab_range(p.g.batch * p.g.groups, items, [&](int64_t slab0, int32_t slabs) {
    kernel<<<blocks_for(int64_t(slabs) * items), kThreads, 0, stream>>>(p.g, a, b, out, slab0,
                                                                        slabs);
    INVOLUTION_CUDA_LAUNCH_CHECK();
  });
}

// A generic kernel over every (slab, pixel): `pixels` per slab along x, slabs along y.
template <typename Kernel, typename A, typename B, typename Out>
void launch_generic(const Kernel& kernel, const detail::Prepared& p, int64_t pixels, const A* a,
                    const B* b, Out* out) {
  const dim3 grid(blocks_for(pixels),
                  static_cast<unsigned>(std::min<int64_t>(p.g.batch * p.g.groups, 65535)));
  kernel<<<grid, kThreads, 0, current_stream()>>>(p.g, a, b, out);
  INVOLUTION_CUDA_LAUNCH_CHECK();
}

// The limits of the CUDA kernels, checked after the shared checks: a clear error, not a
// wrong answer, for the sizes beyond them.
void check_limits(const char* op, const Geometry& g) {
  INVOLUTION_CHECK(
      cuda_kernels_apply(g), op,
      " on CUDA: expected the channels, every spatial size and volume, kernel size and "
      "tap count, stride, padding and dilation to be below 2^31, but got channels ",
      g.channels, ", input volume ", g.in_volume(), ", output volume ", g.out_volume(),
      ", kernel (", g.kernel[0], ", ", g.kernel[1], ", ", g.kernel[2], "), stride (", g.stride[0],
      ", ", g.stride[1], ", ", g.stride[2], "), padding (", g.padding[0], ", ", g.padding[1], ", ",
      g.padding[2], "), dilation (", g.dilation[0], ", ", g.dilation[1], ", ", g.dilation[2], ")");
}

// Runs body.operator()<scalar_t>() for the operands' dtype (one of the supported dtypes).
#define INVOLUTION_DISPATCH(p, ...) \
  INVOLUTION_DISPATCH_SUPPORTED_TYPES((p).a.scalar_type(), "involution_cuda", __VA_ARGS__)

void forward(const detail::Prepared& p) {
  INVOLUTION_DISPATCH(p, [&] {
    using Acc = acc_type<scalar_t>;
    const scalar_t* x = p.a.const_data_ptr<scalar_t>();
    const scalar_t* w = p.b.const_data_ptr<scalar_t>();
    scalar_t* y = p.out.mutable_data_ptr<scalar_t>();
    if (!tiled_kernels_apply(p.g)) {
      launch_generic(forward_generic<scalar_t, Acc>, p, p.g.out_volume(), x, w, y);
      return;
    }
    const bool pairs = forward_pairs_apply(p.g, x), vector = forward_vector_weights_apply(p.g, w);
    with_tiled_shape(p.g, [&](auto k, auto s) {
      constexpr int K = decltype(k)::value, S = decltype(s)::value;
      const auto kernel = pairs ? (vector ? forward_tiled<scalar_t, Acc, K, S, true, true>
                                          : forward_tiled<scalar_t, Acc, K, S, true, false>)
                                : (vector ? forward_tiled<scalar_t, Acc, K, S, false, true>
                                          : forward_tiled<scalar_t, Acc, K, S, false, false>);
      launch_tiled(kernel, p, forward_tiled_items(p.g), x, w, y);
    });
  });
}

void backward_input(const detail::Prepared& p) {
  INVOLUTION_DISPATCH(p, [&] {
    using Acc = acc_type<scalar_t>;
    const scalar_t* gy = p.a.const_data_ptr<scalar_t>();
    const scalar_t* w = p.b.const_data_ptr<scalar_t>();
    scalar_t* gx = p.out.mutable_data_ptr<scalar_t>();
    if (!tiled_kernels_apply(p.g)) {
      launch_generic(backward_input_generic<scalar_t, Acc>, p, p.g.in_volume(), gy, w, gx);
      return;
    }
    with_tiled_shape(p.g, [&](auto k, auto s) {
      constexpr int K = decltype(k)::value, S = decltype(s)::value;
      launch_tiled(backward_input_tiled<scalar_t, Acc, K, S>, p, backward_input_tiled_items(p.g),
                   gy, w, gx);
    });
  });
}

void backward_weight(const detail::Prepared& p) {
  INVOLUTION_DISPATCH(p, [&] {
    using Acc = acc_type<scalar_t>;
    const scalar_t* gy = p.a.const_data_ptr<scalar_t>();
    const scalar_t* x = p.b.const_data_ptr<scalar_t>();
    scalar_t* gw = p.out.mutable_data_ptr<scalar_t>();
    if (!tiled_kernels_apply(p.g)) {
      launch_generic(backward_weight_generic<scalar_t, Acc>, p, p.g.out_volume(), gy, x, gw);
      return;
    }
    with_tiled_shape(p.g, [&](auto k, auto s) {
      constexpr int K = decltype(k)::value, S = decltype(s)::value;
      launch_tiled(backward_weight_tiled<scalar_t, Acc, K, S>, p, backward_weight_tiled_items(p.g),
                   gy, x, gw);
    });
  });
}

// The checks run first (on any device: a CPU operand gets the same-device message), then the
// kernels run on the result's device.
template <int64_t Dims>
Tensor forward_cuda(Tensor input, Tensor weight, IntList stride, IntList padding,
                    IntList dilation) {
  const auto p = detail::prepare_forward(OpFamily<Dims>::name, Dims, input, weight,
                                         {stride, padding, dilation});
  if (p.work) {
    check_limits(OpFamily<Dims>::name, p.g);
    const DeviceGuard guard(p.out);
    forward(p);
  }
  return p.out;
}

template <int64_t Dims>
Tensor backward_input_cuda(Tensor grad_output, Tensor weight, IntList input_size, IntList stride,
                           IntList padding, IntList dilation) {
  const auto p =
      detail::prepare_backward_input(OpFamily<Dims>::backward_input_name, Dims, grad_output, weight,
                                     input_size, {stride, padding, dilation});
  if (p.work) {
    check_limits(OpFamily<Dims>::backward_input_name, p.g);
    const DeviceGuard guard(p.out);
    backward_input(p);
  }
  return p.out;
}

template <int64_t Dims>
Tensor backward_weight_cuda(Tensor grad_output, Tensor input, IntList kernel_size, int64_t groups,
                            IntList stride, IntList padding, IntList dilation) {
  const auto p =
      detail::prepare_backward_weight(OpFamily<Dims>::backward_weight_name, Dims, grad_output,
                                      input, kernel_size, groups, {stride, padding, dilation});
  if (p.work) {
    check_limits(OpFamily<Dims>::backward_weight_name, p.g);
    const DeviceGuard guard(p.out);
    backward_weight(p);
  }
  return p.out;
}

}  // namespace
}  // namespace cuda

STABLE_TORCH_LIBRARY_IMPL(involution, CUDA, m) {
  m.impl("involution2d", TORCH_BOX(&cuda::forward_cuda<2>));
  m.impl("_involution2d_backward_input", TORCH_BOX(&cuda::backward_input_cuda<2>));
  m.impl("_involution2d_backward_weight", TORCH_BOX(&cuda::backward_weight_cuda<2>));
  m.impl("involution3d", TORCH_BOX(&cuda::forward_cuda<3>));
  m.impl("_involution3d_backward_input", TORCH_BOX(&cuda::backward_input_cuda<3>));
  m.impl("_involution3d_backward_weight", TORCH_BOX(&cuda::backward_weight_cuda<3>));
}

}  // namespace involution
