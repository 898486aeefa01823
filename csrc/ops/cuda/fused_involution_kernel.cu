// CUDA kernels of the fused ops fused_involution2d and fused_involution3d (one implementation,
// `Dims` axes): the shared checks (checks.h), then, on the input's device and its current
// stream, the kernels of fused.cuh. The conventions are the CPU kernels'
// (cpu/fused_involution_kernel.cpp): results take the layout of the tensor they correspond to
// (suggest_memory_format), operands are read through contiguous copies, the span weights and
// bias are converted once to the accumulation type, grad_span_weight and grad_span_bias are
// summed in it and converted, and a gradient not asked for (or the bias's, without a bias) is
// an empty tensor.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <type_traits>

#include "../checks.h"
#include "../dtypes.h"
#include "../op_family.h"
#include "fused.cuh"

namespace involution {
namespace cuda {
namespace {

using detail::OpFamily;

// The limits of the fused CUDA kernels, checked after the shared checks: a clear error, not a
// wrong answer, for the sizes beyond them.
void check_fused_limits(const char* op, const Geometry& g, int64_t reduced) {
  TORCH_CHECK(fused_kernels_apply(g, reduced), op,
              " on CUDA: expected the batch size, channels, reduced channels, every spatial size "
              "and volume, kernel size and tap count, stride, padding and dilation, and groups * "
              "taps * (reduced channels + 1) to be below 2^31, but got batch size ",
              g.batch, ", channels ", g.channels, ", reduced channels ", reduced, ", groups ",
              g.groups, ", input volume ", g.in_volume(), ", output volume ", g.out_volume(),
              ", kernel (", g.kernel[0], ", ", g.kernel[1], ", ", g.kernel[2], "), stride (",
              g.stride[0], ", ", g.stride[1], ", ", g.stride[2], "), padding (", g.padding[0], ", ",
              g.padding[1], ", ", g.padding[2], "), dilation (", g.dilation[0], ", ", g.dilation[1],
              ", ", g.dilation[2], ")");
}

// A result allocated in the layout of `like` (contiguous or channels_last).
at::Tensor empty_like_layout(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::empty(sizes, like.options().memory_format(like.suggest_memory_format()));
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The partial sums of `out` (sizes `sizes`) between tap chunks of KT taps: none with one
// chunk, `out` itself when scalar_t is the accumulation type, else a buffer in that type
// (`keep` holds it until the stream is done with it: the caching allocator sees to that).
template <typename scalar_t, int KT>
at::opmath_type<scalar_t>* chunk_partials(const FusedDims& d, scalar_t* out, at::IntArrayRef sizes,
                                          const at::Tensor& like, at::Tensor& keep) {
  using Acc = at::opmath_type<scalar_t>;
  if (d.taps <= KT) return nullptr;
  if constexpr (std::is_same_v<scalar_t, Acc>) {
    return out;
  } else {
    keep = at::empty(sizes, like.options().dtype(acc_dtype(like.scalar_type())));
    return keep.mutable_data_ptr<Acc>();
  }
}

template <typename scalar_t>
void launch_forward(const FusedDims& d, const at::Tensor& like, const scalar_t* x,
                    const scalar_t* z, const at::opmath_type<scalar_t>* S,
                    const at::opmath_type<scalar_t>* bias, scalar_t* y, at::IntArrayRef sizes) {
  using Acc = at::opmath_type<scalar_t>;
  const int32_t gpb = fused_groups_per_block(d.batch, d.out_volume, d.groups);
  const dim3 grid = fused_tile_grid(d.batch, d.out_volume, d.groups, gpb);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  fused_with_tap_chunk<Acc>(d.taps, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    at::Tensor keep;
    Acc* partial = chunk_partials<scalar_t, KT>(d, y, sizes, like, keep);
    fused_forward<scalar_t, Acc, KT>
        <<<grid, kThreads, 0, stream>>>(d, gpb, x, z, S, bias, y, partial);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_backward_input(const FusedDims& d, const at::Tensor& like, const scalar_t* gy,
                           const scalar_t* z, const at::opmath_type<scalar_t>* S,
                           const at::opmath_type<scalar_t>* bias, scalar_t* gx,
                           at::IntArrayRef sizes) {
  using Acc = at::opmath_type<scalar_t>;
  const int32_t gpb = fused_groups_per_block(d.batch, d.in_volume, d.groups);
  const dim3 grid = fused_tile_grid(d.batch, d.in_volume, d.groups, gpb);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  fused_with_tap_chunk<Acc>(d.taps, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    at::Tensor keep;
    Acc* partial = chunk_partials<scalar_t, KT>(d, gx, sizes, like, keep);
    fused_backward_input<scalar_t, Acc, KT>
        <<<grid, kThreads, 0, stream>>>(d, gpb, gy, z, S, bias, gx, partial);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_backward_reduced(const FusedDims& d, const scalar_t* gy, const scalar_t* x,
                             const at::opmath_type<scalar_t>* S, scalar_t* gz) {
  using Acc = at::opmath_type<scalar_t>;
  const dim3 grid(fused_grid_size(fused_ceil_div(d.out_volume, kFusedTile), 65535),
                  fused_grid_size(d.batch, 65535));
  fused_backward_reduced<scalar_t, Acc>
      <<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(d, gy, x, S, gz);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_span_weight (gS) and grad_span_bias (gb), either null when not wanted: per-split
// partial sums of the columns [col0, R + 1) of [z, 1] in a buffer, then their sum in order.
template <typename scalar_t>
void launch_backward_span(const FusedDims& d, const at::Tensor& like, const scalar_t* gy,
                          const scalar_t* x, const scalar_t* z, scalar_t* gS, scalar_t* gb) {
  using Acc = at::opmath_type<scalar_t>;
  const int32_t col0 = gS != nullptr ? 0 : d.reduced;
  const int32_t columns = d.reduced + (gb != nullptr ? 1 : 0) - col0;
  const int32_t rows = d.groups * d.taps;
  const SpanSplits splits = fused_span_splits(d.batch, d.out_volume, int64_t(rows) * columns);
  const at::Tensor partial = at::empty({int64_t(splits.count) * rows * columns},
                                       like.options().dtype(acc_dtype(like.scalar_type())));
  Acc* p = partial.mutable_data_ptr<Acc>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  fused_backward_span_partials<scalar_t, Acc>
      <<<fused_span_grid(d, splits, columns), kThreads, 0, stream>>>(d, splits, col0, columns, gy,
                                                                     x, z, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t elements = int64_t(rows) * columns;
  fused_reduce_partials<scalar_t, Acc>
      <<<fused_grid_size((elements + kThreads - 1) / kThreads, int64_t(1) << 20), kThreads, 0,
         stream>>>(rows, d.reduced, col0, columns, splits.count, p, gS, gb);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int64_t Dims>
at::Tensor fused_forward_cuda(const at::Tensor& input, const at::Tensor& reduced,
                              const at::Tensor& span_weight,
                              const std::optional<at::Tensor>& span_bias,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const detail::Window window{stride, padding, dilation};
  const auto sizes = detail::check_fused_forward(OpFamily<Dims>::fused_name, Dims, input, reduced,
                                                 span_weight, span_bias, kernel_size, window);
  const auto out_sizes = C10_AS_INTARRAYREF_SLOW(sizes.output);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = empty_like_layout(out_sizes, input);
  if (out.numel() == 0) return out;
  const Geometry g = detail::make_fused_geometry(Dims, input.sizes(), out_sizes, kernel_size,
                                                 sizes.groups.expect_int(), window);
  check_fused_limits(OpFamily<Dims>::fused_name, g, reduced.size(1));
  const at::Tensor x = input.contiguous(), z = reduced.contiguous();
  const auto acc = acc_dtype(input.scalar_type());
  const at::Tensor S = span_weight.to(acc).contiguous();
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const at::Tensor bias = has_bias ? span_bias->to(acc).contiguous() : at::Tensor();
  at::Tensor y = out.is_contiguous() ? out : at::empty(out_sizes, input.options());
  const FusedDims d = fused_dims(g, z.size(1));
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(x.scalar_type(), "fused_involution_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
    launch_forward<scalar_t>(
        d, x, x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), S.const_data_ptr<Acc>(),
        has_bias ? bias.const_data_ptr<Acc>() : nullptr, y.mutable_data_ptr<scalar_t>(), out_sizes);
  });
  if (!y.is_same(out)) out.copy_(y);
  return out;
}

template <int64_t Dims>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& reduced,
    const at::Tensor& span_weight, const std::optional<at::Tensor>& span_bias,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 4> mask) {
  const detail::Window window{stride, padding, dilation};
  const auto sizes =
      detail::check_fused_backward(OpFamily<Dims>::fused_backward_name, Dims, grad_output, input,
                                   reduced, span_weight, span_bias, kernel_size, window);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const auto options = input.options();
  at::Tensor gx = mask[0] ? empty_like_layout(input.sizes(), input) : at::empty({0}, options);
  at::Tensor gz = mask[1] ? empty_like_layout(reduced.sizes(), reduced) : at::empty({0}, options);
  at::Tensor gS = mask[2] ? at::empty(span_weight.sizes(), options) : at::empty({0}, options);
  at::Tensor gb =
      mask[3] && has_bias ? at::empty({span_weight.size(0)}, options) : at::empty({0}, options);
  const bool want_gS = mask[2] && gS.numel() > 0, want_gb = mask[3] && has_bias && gb.numel() > 0;
  if (grad_output.numel() == 0 || input.numel() == 0) {
    // No output element or no input channel contributes: every gradient is zero.
    if (mask[0]) gx.zero_();
    if (mask[1]) gz.zero_();
    if (mask[2]) gS.zero_();
    if (mask[3] && has_bias) gb.zero_();
    return {gx, gz, gS, gb};
  }
  const Geometry g = detail::make_fused_geometry(Dims, input.sizes(), grad_output.sizes(),
                                                 kernel_size, sizes.groups.expect_int(), window);
  check_fused_limits(OpFamily<Dims>::fused_backward_name, g, reduced.size(1));
  const at::Tensor gy = grad_output.contiguous(), x = input.contiguous(), z = reduced.contiguous();
  const auto acc = acc_dtype(input.scalar_type());
  const at::Tensor S = span_weight.to(acc).contiguous();
  const at::Tensor bias = has_bias ? span_bias->to(acc).contiguous() : at::Tensor();
  const FusedDims d = fused_dims(g, z.size(1));
  at::Tensor gx_c = !mask[0] || gx.is_contiguous() ? gx : at::empty(input.sizes(), options);
  at::Tensor gz_c = !mask[1] || gz.is_contiguous() ? gz : at::empty(reduced.sizes(), options);
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(x.scalar_type(), "fused_involution_backward_cuda", [&] {
    using Acc = at::opmath_type<scalar_t>;
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
  if (mask[0] && !gx_c.is_same(gx)) gx.copy_(gx_c);
  if (mask[1] && !gz_c.is_same(gz)) gz.copy_(gz_c);
  return {gx, gz, gS, gb};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(involution, CUDA, m) {
  m.impl("fused_involution2d", TORCH_FN(cuda::fused_forward_cuda<2>));
  m.impl("_fused_involution2d_backward", TORCH_FN(cuda::fused_backward_cuda<2>));
  m.impl("fused_involution3d", TORCH_FN(cuda::fused_forward_cuda<3>));
  m.impl("_fused_involution3d_backward", TORCH_FN(cuda::fused_backward_cuda<3>));
}

}  // namespace involution
