// CUDA kernels of the fused ops fused_involution2d and fused_involution3d (one implementation,
// `Dims` axes): the shared checks (checks.h), then, on the input's device and its current
// stream, the kernels of fused.cuh. The conventions are the CPU kernels'
// (cpu/fused_involution_kernel.cpp): results take the layout of the tensor they correspond to
// (suggest_memory_format), operands are read through contiguous copies, the span weights and
// bias are converted once to the accumulation type, grad_span_weight and grad_span_bias are
// summed in it and converted, and a gradient not asked for (or the bias's, without a bias) is
// an empty tensor.

#include <torch/csrc/stable/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <type_traits>

#include "../dtypes.h"
#include "../op_names.h"
#include "fused.cuh"
#include "stable_cuda.h"

namespace involution {
namespace cuda {
namespace {

template <int64_t Dims>
using OpFamily = detail::OpNames<Dims>;
using detail::acc_dtype;
using detail::allocate;
using detail::dense;
using detail::dense_as;
using detail::empty_like_layout;
using detail::info;
using detail::Tensor;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

// The limits of the fused CUDA kernels, checked after the shared checks: a clear error, not a
// wrong answer, for the sizes beyond them.
void check_fused_limits(const char* op, const Geometry& g, int64_t reduced) {
  INVOLUTION_CHECK(
      fused_kernels_apply(g, reduced), op,
      " on CUDA: expected the batch size, channels, reduced channels, every spatial size "
      "and volume, kernel size and tap count, stride, padding and dilation, and groups * "
      "taps * (reduced channels + 1) to be below 2^31, but got batch size ",
      g.batch, ", channels ", g.channels, ", reduced channels ", reduced, ", groups ", g.groups,
      ", input volume ", g.in_volume(), ", output volume ", g.out_volume(), ", kernel (",
      g.kernel[0], ", ", g.kernel[1], ", ", g.kernel[2], "), stride (", g.stride[0], ", ",
      g.stride[1], ", ", g.stride[2], "), padding (", g.padding[0], ", ", g.padding[1], ", ",
      g.padding[2], "), dilation (", g.dilation[0], ", ", g.dilation[1], ", ", g.dilation[2], ")");
}

// The partial sums of `out` (sizes `sizes`) between tap chunks of KT taps: none with one
// chunk, `out` itself when scalar_t is the accumulation type, else a buffer in that type
// (`keep` holds it until the stream is done with it: the caching allocator sees to that).
template <typename scalar_t, int KT>
acc_type<scalar_t>* chunk_partials(const FusedDims& d, scalar_t* out, IntList sizes,
                                   const Tensor& like, Tensor& keep) {
  using Acc = acc_type<scalar_t>;
  if (d.taps <= KT) return nullptr;
  if constexpr (std::is_same_v<scalar_t, Acc>) {
    return out;
  } else {
    keep = allocate(sizes, acc_dtype(like.scalar_type()), like);
    return keep.mutable_data_ptr<Acc>();
  }
}

template <typename scalar_t>
void launch_forward(const FusedDims& d, const Tensor& like, const scalar_t* x, const scalar_t* z,
                    const acc_type<scalar_t>* S, const acc_type<scalar_t>* bias, scalar_t* y,
                    IntList sizes) {
  using Acc = acc_type<scalar_t>;
  const int32_t gpb = fused_groups_per_block(d.batch, d.out_volume, d.groups);
  const dim3 grid = fused_tile_grid(d.batch, d.out_volume, d.groups, gpb);
  const auto stream = current_stream();
  fused_with_tap_chunk<Acc>(d.taps, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    Tensor keep;
    Acc* partial = chunk_partials<scalar_t, KT>(d, y, sizes, like, keep);
    fused_forward<scalar_t, Acc, KT>
        <<<grid, kThreads, 0, stream>>>(d, gpb, x, z, S, bias, y, partial);
    INVOLUTION_CUDA_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_backward_input(const FusedDims& d, const Tensor& like, const scalar_t* gy,
                           const scalar_t* z, const acc_type<scalar_t>* S,
                           const acc_type<scalar_t>* bias, scalar_t* gx, IntList sizes) {
  using Acc = acc_type<scalar_t>;
  const int32_t gpb = fused_groups_per_block(d.batch, d.in_volume, d.groups);
  const dim3 grid = fused_tile_grid(d.batch, d.in_volume, d.groups, gpb);
  const auto stream = current_stream();
  fused_with_tap_chunk<Acc>(d.taps, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    Tensor keep;
    Acc* partial = chunk_partials<scalar_t, KT>(d, gx, sizes, like, keep);
    fused_backward_input<scalar_t, Acc, KT>
        <<<grid, kThreads, 0, stream>>>(d, gpb, gy, z, S, bias, gx, partial);
    INVOLUTION_CUDA_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_backward_reduced(const FusedDims& d, const scalar_t* gy, const scalar_t* x,
                             const acc_type<scalar_t>* S, scalar_t* gz) {
  using Acc = acc_type<scalar_t>;
  const dim3 grid(fused_grid_size(fused_ceil_div(d.out_volume, kFusedTile), 65535),
                  fused_grid_size(d.batch, 65535));
  fused_backward_reduced<scalar_t, Acc><<<grid, kThreads, 0, current_stream()>>>(d, gy, x, S, gz);
  INVOLUTION_CUDA_LAUNCH_CHECK();
}

// grad_span_weight (gS) and grad_span_bias (gb), either null when not wanted: per-split
// partial sums of the columns [col0, R + 1) of [z, 1] in a buffer, then their sum in order.
template <typename scalar_t>
void launch_backward_span(const FusedDims& d, const Tensor& like, const scalar_t* gy,
                          const scalar_t* x, const scalar_t* z, scalar_t* gS, scalar_t* gb) {
  using Acc = acc_type<scalar_t>;
  const int32_t col0 = gS != nullptr ? 0 : d.reduced;
  const int32_t columns = d.reduced + (gb != nullptr ? 1 : 0) - col0;
  const int32_t rows = d.groups * d.taps;
  const SpanSplits splits = fused_span_splits(d.batch, d.out_volume, int64_t(rows) * columns);
  const Tensor partial =
      allocate({int64_t(splits.count) * rows * columns}, acc_dtype(like.scalar_type()), like);
  Acc* p = partial.mutable_data_ptr<Acc>();
  const auto stream = current_stream();
  fused_backward_span_partials<scalar_t, Acc>
      <<<fused_span_grid(d, splits, columns), kThreads, 0, stream>>>(d, splits, col0, columns, gy,
                                                                     x, z, p);
  INVOLUTION_CUDA_LAUNCH_CHECK();
  const int64_t elements = int64_t(rows) * columns;
  fused_reduce_partials<scalar_t, Acc>
      <<<fused_grid_size((elements + kThreads - 1) / kThreads, int64_t(1) << 20), kThreads, 0,
         stream>>>(rows, d.reduced, col0, columns, splits.count, p, gS, gb);
  INVOLUTION_CUDA_LAUNCH_CHECK();
}

template <int64_t Dims>
Tensor fused_forward_cuda(Tensor input, Tensor reduced, Tensor span_weight,
                          std::optional<Tensor> span_bias, IntList kernel_size, IntList stride,
                          IntList padding, IntList dilation) {
  const detail::Window window{stride, padding, dilation};
  const auto sizes =
      detail::check_fused_forward(OpFamily<Dims>::fused_name, Dims, info(input), info(reduced),
                                  info(span_weight), info(span_bias), kernel_size, window);
  const IntList out_sizes = sizes.output;
  const DeviceGuard guard(input);
  Tensor out = empty_like_layout(out_sizes, input);
  if (out.numel() == 0) return out;
  const Geometry g = detail::make_fused_geometry(Dims, input.sizes(), out_sizes, kernel_size,
                                                 sizes.groups, window);
  check_fused_limits(OpFamily<Dims>::fused_name, g, reduced.size(1));
  const Tensor x = dense(input), z = dense(reduced);
  const auto acc = acc_dtype(input.scalar_type());
  const Tensor S = dense_as(span_weight, acc);
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const Tensor bias = dense_as(span_bias, acc);
  const bool direct = out.is_contiguous();
  Tensor y = direct ? out : allocate(out_sizes, input.scalar_type(), input);
  const FusedDims d = fused_dims(g, z.size(1));
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(x.scalar_type(), "fused_involution_cuda", [&] {
    using Acc = acc_type<scalar_t>;
    launch_forward<scalar_t>(
        d, x, x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), S.const_data_ptr<Acc>(),
        has_bias ? bias.const_data_ptr<Acc>() : nullptr, y.mutable_data_ptr<scalar_t>(), out_sizes);
  });
  if (!direct) torch::stable::copy_(out, y);
  return out;
}

template <int64_t Dims>
std::tuple<Tensor, Tensor, Tensor, Tensor> fused_backward_cuda(Tensor grad_output, Tensor input,
                                                               Tensor reduced, Tensor span_weight,
                                                               std::optional<Tensor> span_bias,
                                                               IntList kernel_size, IntList stride,
                                                               IntList padding, IntList dilation,
                                                               std::vector<bool> output_mask) {
  const detail::Window window{stride, padding, dilation};
  const auto sizes = detail::check_fused_backward(
      OpFamily<Dims>::fused_backward_name, Dims, info(grad_output), info(input), info(reduced),
      info(span_weight), info(span_bias), kernel_size, window);
  const std::array<bool, 4> mask = detail::output_mask(output_mask);
  const DeviceGuard guard(input);
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const auto dtype = input.scalar_type();
  const auto none = [&] { return allocate({0}, dtype, input); };
  Tensor gx = mask[0] ? empty_like_layout(input.sizes(), input) : none();
  Tensor gz = mask[1] ? empty_like_layout(reduced.sizes(), reduced) : none();
  Tensor gS = mask[2] ? allocate(span_weight.sizes(), dtype, input) : none();
  Tensor gb = mask[3] && has_bias ? allocate({span_weight.size(0)}, dtype, input) : none();
  const bool want_gS = mask[2] && gS.numel() > 0, want_gb = mask[3] && has_bias && gb.numel() > 0;
  if (grad_output.numel() == 0 || input.numel() == 0) {
    // No output element or no input channel contributes: every gradient is zero.
    if (mask[0]) torch::stable::zero_(gx);
    if (mask[1]) torch::stable::zero_(gz);
    if (mask[2]) torch::stable::zero_(gS);
    if (mask[3] && has_bias) torch::stable::zero_(gb);
    return {gx, gz, gS, gb};
  }
  const Geometry g = detail::make_fused_geometry(Dims, input.sizes(), grad_output.sizes(),
                                                 kernel_size, sizes.groups, window);
  check_fused_limits(OpFamily<Dims>::fused_backward_name, g, reduced.size(1));
  const Tensor gy = dense(grad_output), x = dense(input), z = dense(reduced);
  const auto acc = acc_dtype(dtype);
  const Tensor S = dense_as(span_weight, acc);
  const Tensor bias = dense_as(span_bias, acc);
  const FusedDims d = fused_dims(g, z.size(1));
  const bool gx_direct = !mask[0] || gx.is_contiguous();
  const bool gz_direct = !mask[1] || gz.is_contiguous();
  Tensor gx_c = gx_direct ? gx : allocate(input.sizes(), dtype, input);
  Tensor gz_c = gz_direct ? gz : allocate(reduced.sizes(), dtype, input);
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(x.scalar_type(), "fused_involution_backward_cuda", [&] {
    using Acc = acc_type<scalar_t>;
    if (mask[0]) {
      launch_backward_input<scalar_t>(d, x, gy.const_data_ptr<scalar_t>(),
                                      z.const_data_ptr<scalar_t>(), S.const_data_ptr<Acc>(),
                                      has_bias ? bias.const_data_ptr<Acc>() : nullptr,
                                      gx_c.mutable_data_ptr<scalar_t>(), input.sizes());
    }
    if (mask[1] && gz_c.numel() > 0) {
      launch_backward_reduced<scalar_t>(d, gy.const_data_ptr<scalar_t>(),
                                        x.const_data_ptr<scalar_t>(), S.const_data_ptr<Acc>(),
                                        gz_c.mutable_data_ptr<scalar_t>());
    }
    if (want_gS || want_gb) {
      launch_backward_span<scalar_t>(d, x, gy.const_data_ptr<scalar_t>(),
                                     x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                                     want_gS ? gS.mutable_data_ptr<scalar_t>() : nullptr,
                                     want_gb ? gb.mutable_data_ptr<scalar_t>() : nullptr);
    }
  });
  if (!gx_direct) torch::stable::copy_(gx, gx_c);
  if (!gz_direct) torch::stable::copy_(gz, gz_c);
  return {gx, gz, gS, gb};
}

}  // namespace
}  // namespace cuda

STABLE_TORCH_LIBRARY_IMPL(involution, CUDA, m) {
  m.impl("fused_involution2d", TORCH_BOX(&cuda::fused_forward_cuda<2>));
  m.impl("_fused_involution2d_backward", TORCH_BOX(&cuda::fused_backward_cuda<2>));
  m.impl("fused_involution3d", TORCH_BOX(&cuda::fused_forward_cuda<3>));
  m.impl("_fused_involution3d_backward", TORCH_BOX(&cuda::fused_backward_cuda<3>));
}

}  // namespace involution
