#pragma once
// Direct CPU kernels: one scalar sum per element of the tensor written, reading the operands in
// place with bounds checks, and no buffers at all. They serve the geometries whose staging
// buffers (row_kernels.h) would be large compared to the tensors: a stride, padding or dilation
// far larger than the image, where the staged rows would be mostly zeros and gaps (a stride of
// 512 on an 8x8 input would stage 1.9 GB). They compute the same sums as the row kernels, in
// the same semantics (taps outside the input enter the sum as w * 0 on every axis), with the
// same task split (blocks of kRowsPerTask rows of the tensor written), so the results are
// deterministic and independent of the thread count. Speed is not their concern: every
// multiply-add is scalar.

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../geometry.h"
#include "kernel_table.h"

namespace involution {
namespace cpu {
namespace direct {

using cpu::acc_type;

// Input index of tap k of output index o along one axis, and whether it lies in [0, n).
inline int64_t tap_index(int64_t o, int64_t s, int64_t p, int64_t k, int64_t d) {
  return o * s - p + k * d;
}

// Calls f(x_offset or -1, tap) for every tap of output position (od, oh, ow); -1 marks a tap
// outside the input (its term is w * 0).
template <typename F>
inline void for_each_tap(const Geometry& g, int64_t od, int64_t oh, int64_t ow, F&& f) {
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  int64_t t = 0;
  for (int64_t kd = 0; kd < KD; ++kd) {
    const int64_t id = tap_index(od, g.stride[0], g.padding[0], kd, g.dilation[0]);
    const bool d_in = id >= 0 && id < g.in[0];
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t ih = tap_index(oh, g.stride[1], g.padding[1], kh, g.dilation[1]);
      const bool h_in = d_in && ih >= 0 && ih < g.in[1];
      for (int64_t kw = 0; kw < KW; ++kw, ++t) {
        const int64_t iw = tap_index(ow, g.stride[2], g.padding[2], kw, g.dilation[2]);
        const bool in = h_in && iw >= 0 && iw < g.in[2];
        f(in ? (id * g.in[1] + ih) * g.in[2] + iw : int64_t{-1}, t);
      }
    }
  }
}

template <typename scalar_t>
void forward(const Geometry& g, const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t begin,
             int64_t end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t cpg = g.channels_per_group(), out_volume = g.out_volume();
  const int64_t in_volume = g.in_volume();
  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = output_row_block(g, task);
    const int64_t oh0 = rb.row0, oh1 = rb.row1, od = rb.depth, bg = rb.bg, c0 = rb.c0;
    const scalar_t* w_bg = w + bg * g.taps() * out_volume;
    for (int64_t c = 0; c < cpg; ++c) {
      const scalar_t* xc = x + (c0 + c) * in_volume;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t o = (od * OH + oh) * OW + ow;
          acc_t acc = 0;
          for_each_tap(g, od, oh, ow, [&](int64_t xi, int64_t t) {
            acc += static_cast<acc_t>(w_bg[t * out_volume + o]) *
                   (xi >= 0 ? static_cast<acc_t>(xc[xi]) : acc_t(0));
          });
          y[(c0 + c) * out_volume + o] = static_cast<scalar_t>(acc);
        }
      }
    }
  }
}

template <typename scalar_t>
void backward_weight(const Geometry& g, const scalar_t* grad_y, const scalar_t* x, scalar_t* grad_w,
                     int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t cpg = g.channels_per_group(), out_volume = g.out_volume(), taps = g.taps();
  const int64_t in_volume = g.in_volume();
  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = output_row_block(g, task);
    const int64_t oh0 = rb.row0, oh1 = rb.row1, od = rb.depth, bg = rb.bg, c0 = rb.c0;
    scalar_t* gw_bg = grad_w + bg * taps * out_volume;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t o = (od * OH + oh) * OW + ow;
        for_each_tap(g, od, oh, ow, [&](int64_t xi, int64_t t) {
          acc_t acc = 0;
          for (int64_t c = 0; c < cpg; ++c) {
            acc += static_cast<acc_t>(grad_y[(c0 + c) * out_volume + o]) *
                   (xi >= 0 ? static_cast<acc_t>(x[(c0 + c) * in_volume + xi]) : acc_t(0));
          }
          gw_bg[t * out_volume + o] = static_cast<scalar_t>(acc);
        });
      }
    }
  }
}

// Gather form: input position i receives, from tap k along an axis, the output index
// (i + p - k*d) / s when that division is exact and the index lies in [0, O).
template <typename scalar_t>
void backward_input(const Geometry& g, const scalar_t* grad_y, const scalar_t* w, scalar_t* grad_x,
                    int64_t begin, int64_t end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = g.in[1], W = g.in[2];
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group(), out_volume = g.out_volume(), taps = g.taps();
  const int64_t in_volume = g.in_volume();
  auto source = [&](int64_t i, int64_t axis, int64_t k) -> int64_t {
    const int64_t n = i + g.padding[axis] - k * g.dilation[axis];
    if (n < 0 || n % g.stride[axis] != 0) return -1;
    const int64_t o = n / g.stride[axis];
    return o < g.out[axis] ? o : -1;
  };
  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = input_row_block(g, task);
    const int64_t ih0 = rb.row0, ih1 = rb.row1, id = rb.depth, bg = rb.bg, c0 = rb.c0;
    const scalar_t* w_bg = w + bg * taps * out_volume;
    for (int64_t c = 0; c < cpg; ++c) {
      const scalar_t* gy = grad_y + (c0 + c) * out_volume;
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        for (int64_t iw = 0; iw < W; ++iw) {
          acc_t acc = 0;
          for (int64_t kd = 0; kd < KD; ++kd) {
            const int64_t od = source(id, 0, kd);
            if (od < 0) continue;
            for (int64_t kh = 0; kh < KH; ++kh) {
              const int64_t oh = source(ih, 1, kh);
              if (oh < 0) continue;
              for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t ow = source(iw, 2, kw);
                if (ow < 0) continue;
                const int64_t o = (od * OH + oh) * OW + ow;
                acc += static_cast<acc_t>(w_bg[((kd * KH + kh) * KW + kw) * out_volume + o]) *
                       static_cast<acc_t>(gy[o]);
              }
            }
          }
          grad_x[(c0 + c) * in_volume + (id * H + ih) * W + iw] = static_cast<scalar_t>(acc);
        }
      }
    }
  }
}

}  // namespace direct
}  // namespace cpu
}  // namespace involution
