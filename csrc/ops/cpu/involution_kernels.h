#pragma once
// CPU kernels for involution forward and its two gradients, free of framework types.
//
// Layouts (all contiguous, row-major):
//   x  / grad_input  : (B, C, D, H, W)
//   w  / grad_weight : (B, G, KD, KH, KW, OD, OH, OW)
//   y  / grad_output : (B, C, OD, OH, OW)
// A 2-D problem is passed with D = KD = OD = 1.
//
// Work is split into "rows": one task owns one (b, g, depth, height) row of the tensor it
// writes and loops over the channels of group g inside, so each weight row is read once from
// memory and reused from cache by all C/G channels of its group. Every output element is
// written by exactly one task with a fixed summation order: results are deterministic and
// independent of the number of threads. No atomics, no buffers beyond a few rows per task.
//
// scalar_t is the storage type, acc_t the accumulation type (float for float16/bfloat16).

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../geometry.h"

namespace involution {
namespace cpu {

// The output columns j in [lo, hi) whose input column j * stride + offset lies in [0, width).
struct ColumnRange {
  int64_t lo;
  int64_t hi;
};

inline ColumnRange valid_columns(int64_t offset, int64_t stride, int64_t width, int64_t out_width) {
  const int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t last = width - 1 - offset;  // largest allowed j * stride
  int64_t hi = last < 0 ? 0 : std::min(out_width, last / stride + 1);
  return {std::min(lo, hi), hi};
}

// Column ranges for every kernel column kw, shared by all rows of a problem.
inline std::vector<ColumnRange> column_ranges(const Geometry& g) {
  std::vector<ColumnRange> ranges(g.kernel[2]);
  for (int64_t kw = 0; kw < g.kernel[2]; ++kw) {
    ranges[kw] = valid_columns(kw * g.dilation[2] - g.padding[2], g.stride[2], g.in[2], g.out[2]);
  }
  return ranges;
}

// The input index read by output index o at kernel tap k along axis a, or -1 if it is padding.
inline int64_t input_index(const Geometry& g, int axis, int64_t o, int64_t k) {
  const int64_t i = o * g.stride[axis] - g.padding[axis] + k * g.dilation[axis];
  return (i >= 0 && i < g.in[axis]) ? i : -1;
}

// The output index that reads input index i at kernel tap k along axis a, or -1 if none does.
inline int64_t output_index(const Geometry& g, int axis, int64_t i, int64_t k) {
  const int64_t num = i + g.padding[axis] - k * g.dilation[axis];
  if (num < 0 || num % g.stride[axis] != 0) return -1;
  const int64_t o = num / g.stride[axis];
  return o < g.out[axis] ? o : -1;
}

// acc[j] += a[j] * b[j * stride + offset] for j in range.
template <typename acc_t, typename scalar_t>
inline void multiply_accumulate_row(acc_t* acc, const scalar_t* a, const scalar_t* b, int64_t stride,
                                    int64_t offset, ColumnRange r) {
  if (stride == 1) {
    for (int64_t j = r.lo; j < r.hi; ++j) {
      acc[j] += static_cast<acc_t>(a[j]) * static_cast<acc_t>(b[j + offset]);
    }
  } else {
    for (int64_t j = r.lo; j < r.hi; ++j) {
      acc[j] += static_cast<acc_t>(a[j]) * static_cast<acc_t>(b[j * stride + offset]);
    }
  }
}

// y[b, c, od, oh, :] for tasks (b, g, od, oh) in [begin, end).
template <typename scalar_t, typename acc_t>
void forward(const Geometry& g, const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t begin,
             int64_t end) {
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t H = g.in[1], W = g.in[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group();
  const int64_t out_volume = g.out_volume(), in_volume = g.in_volume();
  const std::vector<ColumnRange> cols = column_ranges(g);
  std::vector<acc_t> acc(OW);

  for (int64_t task = begin; task < end; ++task) {
    const int64_t oh = task % OH;
    const int64_t od = (task / OH) % OD;
    const int64_t bg = task / (OH * OD);  // b * G + group
    const int64_t row = od * OH * OW + oh * OW;
    const scalar_t* w_row = w + bg * g.taps() * out_volume + row;
    const int64_t c0 = (bg / g.groups) * g.channels + (bg % g.groups) * cpg;  // b * C + first channel

    for (int64_t c = c0; c < c0 + cpg; ++c) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* x_c = x + c * in_volume;
      for (int64_t kd = 0; kd < KD; ++kd) {
        const int64_t id = input_index(g, 0, od, kd);
        if (id < 0) continue;
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t ih = input_index(g, 1, oh, kh);
          if (ih < 0) continue;
          const scalar_t* x_row = x_c + (id * H + ih) * W;
          for (int64_t kw = 0; kw < KW; ++kw) {
            const scalar_t* w_tap = w_row + ((kd * KH + kh) * KW + kw) * out_volume;
            multiply_accumulate_row(acc.data(), w_tap, x_row, g.stride[2],
                                    kw * g.dilation[2] - g.padding[2], cols[kw]);
          }
        }
      }
      scalar_t* y_row = y + c * out_volume + row;
      for (int64_t j = 0; j < OW; ++j) y_row[j] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// grad_input[b, c, id, ih, :] for tasks (b, g, id, ih) in [begin, end), in the gather form:
// each task sums, for its own input row, the contributions of every output row that reads it.
template <typename scalar_t, typename acc_t>
void backward_input(const Geometry& g, const scalar_t* grad_y, const scalar_t* w, scalar_t* grad_x,
                    int64_t begin, int64_t end) {
  const int64_t D = g.in[0], H = g.in[1], W = g.in[2];
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group();
  const int64_t out_volume = g.out_volume(), in_volume = g.in_volume();
  const std::vector<ColumnRange> cols = column_ranges(g);
  std::vector<acc_t> acc(W);

  for (int64_t task = begin; task < end; ++task) {
    const int64_t ih = task % H;
    const int64_t id = (task / H) % D;
    const int64_t bg = task / (H * D);
    const scalar_t* w_bg = w + bg * g.taps() * out_volume;
    const int64_t c0 = (bg / g.groups) * g.channels + (bg % g.groups) * cpg;

    for (int64_t c = c0; c < c0 + cpg; ++c) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* grad_y_c = grad_y + c * out_volume;
      for (int64_t kd = 0; kd < KD; ++kd) {
        const int64_t od = output_index(g, 0, id, kd);
        if (od < 0) continue;
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t oh = output_index(g, 1, ih, kh);
          if (oh < 0) continue;
          const int64_t row = od * OH * OW + oh * OW;
          const scalar_t* grad_y_row = grad_y_c + row;
          for (int64_t kw = 0; kw < KW; ++kw) {
            const scalar_t* w_tap = w_bg + ((kd * KH + kh) * KW + kw) * out_volume + row;
            const int64_t offset = kw * g.dilation[2] - g.padding[2];
            const ColumnRange r = cols[kw];
            if (g.stride[2] == 1) {
              for (int64_t j = r.lo; j < r.hi; ++j) {
                acc[j + offset] += static_cast<acc_t>(w_tap[j]) * static_cast<acc_t>(grad_y_row[j]);
              }
            } else {
              for (int64_t j = r.lo; j < r.hi; ++j) {
                acc[j * g.stride[2] + offset] +=
                    static_cast<acc_t>(w_tap[j]) * static_cast<acc_t>(grad_y_row[j]);
              }
            }
          }
        }
      }
      scalar_t* grad_x_row = grad_x + c * in_volume + (id * H + ih) * W;
      for (int64_t j = 0; j < W; ++j) grad_x_row[j] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// grad_weight[b, g, :, :, :, od, oh, :] for tasks (b, g, od, oh) in [begin, end): the sum over
// the channels of group g, done inside the task (no atomics).
template <typename scalar_t, typename acc_t>
void backward_weight(const Geometry& g, const scalar_t* grad_y, const scalar_t* x,
                     scalar_t* grad_w, int64_t begin, int64_t end) {
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t H = g.in[1], W = g.in[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t taps = g.taps();
  const int64_t cpg = g.channels_per_group();
  const int64_t out_volume = g.out_volume(), in_volume = g.in_volume();
  const std::vector<ColumnRange> cols = column_ranges(g);
  std::vector<acc_t> acc(taps * OW);

  for (int64_t task = begin; task < end; ++task) {
    const int64_t oh = task % OH;
    const int64_t od = (task / OH) % OD;
    const int64_t bg = task / (OH * OD);
    const int64_t row = od * OH * OW + oh * OW;
    const int64_t c0 = (bg / g.groups) * g.channels + (bg % g.groups) * cpg;
    std::fill(acc.begin(), acc.end(), acc_t(0));

    for (int64_t c = c0; c < c0 + cpg; ++c) {
      const scalar_t* grad_y_row = grad_y + c * out_volume + row;
      const scalar_t* x_c = x + c * in_volume;
      for (int64_t kd = 0; kd < KD; ++kd) {
        const int64_t id = input_index(g, 0, od, kd);
        if (id < 0) continue;
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t ih = input_index(g, 1, oh, kh);
          if (ih < 0) continue;
          const scalar_t* x_row = x_c + (id * H + ih) * W;
          for (int64_t kw = 0; kw < KW; ++kw) {
            acc_t* acc_tap = acc.data() + ((kd * KH + kh) * KW + kw) * OW;
            multiply_accumulate_row(acc_tap, grad_y_row, x_row, g.stride[2],
                                    kw * g.dilation[2] - g.padding[2], cols[kw]);
          }
        }
      }
    }
    scalar_t* grad_w_row = grad_w + bg * taps * out_volume + row;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t j = 0; j < OW; ++j) {
        grad_w_row[t * out_volume + j] = static_cast<scalar_t>(acc[t * OW + j]);
      }
    }
  }
}

}  // namespace cpu
}  // namespace involution
