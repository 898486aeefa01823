// CPU kernels of the fused ops fused_involution2d and fused_involution3d (one implementation,
// `Dims` axes).
//
// The kernel W = span(z) is generated one (batch, group) slab at a time into a buffer of
// taps x output pixels per thread (span_kernels.h), and the involution row kernels
// (row_kernels.h) run on that slab as a problem of one sample and one group: W never reaches
// the (B, G*taps, O...) tensor the unfused path allocates, writes and reads.
//   * forward: for RedNet's width geometries (channel_vector_handles: kernel width 3 or 7,
//     width stride 1 or 2) the forward kernel of channel_vector_kernels.h generates W itself,
//     64 output pixels at a time into a buffer in L1, and aggregates from there; otherwise W
//     is generated a few output rows at a time (a task grain), right before the forward row
//     kernel reads those rows, so it is read back from L1/L2;
//   * grad_input, slab by slab: the whole slab's W, then the input-gradient row kernel (an input
//     row reads a window of output rows);
//   * the rest, in units of one sample's output rows: for each group and a few rows at a time,
//     the weight-gradient row kernel gives dW, from which grad_reduced (summed over the groups
//     in order, in the accumulation type), grad_span_weight and grad_span_bias (per-unit
//     partial sums) follow. The partial sums are added unit after unit in a fixed order, so
//     every result is deterministic and independent of the number of threads, without atomics.
//     Small outputs (fewer pixels per sample than reduced channels) keep dW of all slabs
//     instead (fused_backward_span_whole).
// channels-last inputs (channels_last, channels_last_3d) run the kernels of
// channels_last_kernels.h on the tensors as they are, no copy; the output and grad_input keep
// that layout.
// Memory: one slab of W (or dW) per thread, taps * O... elements, and the partial sums (for
// small outputs dW of all slabs, no larger than they would be), at most a few times the input's
// size for any geometry.

#include <torch/csrc/stable/library.h>

#include <memory>
#include <vector>

#include "../dtypes.h"
#include "../op_names.h"
#include "../stable_tensor.h"
#include "scheduling.h"

namespace involution {
namespace cpu {

namespace {

template <int64_t Dims>
using OpFamily = detail::OpNames<Dims>;

// A fused problem: the involution geometry, the span conv's sizes, and the slab problem the row
// kernels run on (one sample, one group of C/G channels).
struct Fused {
  Geometry g;
  Geometry slab;  // batch 1, groups 1, channels C/G
  int64_t taps = 0, reduced = 0, pixels = 0;

  Fused(const Geometry& geometry, int64_t R) : g(geometry), slab(geometry) {
    slab.batch = 1;
    slab.groups = 1;
    slab.channels = g.channels_per_group();
    taps = g.taps();
    reduced = R;
    pixels = g.out_volume();
  }
  // Offsets of slab (b, group) in the features (B, C, I...) and the output (B, C, O...).
  int64_t input_offset(int64_t b, int64_t group) const {
    return (b * g.channels + group * g.channels_per_group()) * g.in_volume();
  }
  int64_t output_offset(int64_t b, int64_t group) const {
    return (b * g.channels + group * g.channels_per_group()) * pixels;
  }
  // The first output pixel of slab task `task` (a block of kRowsPerTask output rows at one
  // depth); `pixels` for the task count.
  int64_t first_pixel(int64_t task) const {
    const int64_t blocks = ceil_div(g.out[1], kRowsPerTask);
    if (task >= output_row_tasks(slab)) return pixels;
    return ((task / blocks) * g.out[1] + (task % blocks) * kRowsPerTask) * g.out[2];
  }
};

// Runs fn(slab, W buffer) over the B*G slabs. Many slabs: each thread takes whole slabs and
// uses its own buffer. Few slabs: one slab after another, each generated and aggregated by all
// threads (fn gets `inner_threads` > 1 then). Either way each element is computed by one
// fixed sum.
template <typename scalar_t, typename F>
void for_each_slab(const Fused& f, const F& fn) {
  const int64_t slabs = f.g.batch * f.g.groups;
  const int64_t threads = useful_threads(slabs, 1);
  const size_t buffer = static_cast<size_t>(f.taps * f.pixels);
  if (slabs >= 2 * threads) {
    run_guided(threads, slabs, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> W(buffer);
      for (int64_t s = begin; s < end; ++s) fn(s, W.data(), int64_t{1});
    });
    return;
  }
  std::vector<scalar_t> W(buffer);
  const int64_t inner = num_threads();
  for (int64_t s = 0; s < slabs; ++s) fn(s, W.data(), inner);
}

// W of slab (b, group) over all its pixels, with `threads` threads (columns split in blocks).
template <typename scalar_t>
void generate(const Fused& f, const Kernels<scalar_t>& k, const acc_type<scalar_t>* S,
              const acc_type<scalar_t>* bias, const scalar_t* z, int64_t b, int64_t group,
              scalar_t* W, int64_t threads) {
  const acc_type<scalar_t>* S_g = S + group * f.taps * f.reduced;
  const acc_type<scalar_t>* bias_g = bias ? bias + group * f.taps : nullptr;
  const scalar_t* z_b = z + b * f.reduced * f.pixels;
  constexpr int64_t kColumns = 256;  // columns per parallel block (a multiple of any vector)
  const int64_t blocks = ceil_div(f.pixels, kColumns);
  auto columns = [&](int64_t b0, int64_t b1) {
    k.span_generate(f.taps, f.reduced, S_g, bias_g, z_b, f.pixels, W, b0 * kColumns,
                    std::min(f.pixels, b1 * kColumns));
  };
  if (threads <= 1 || blocks < 2) {
    columns(0, blocks);
  } else {
    parallel_for(0, blocks, 1, columns);
  }
}

// Runs the row kernel `kernel` on slab tasks [0, tasks) with `threads` threads.
template <typename scalar_t, typename Kernel>
void slab_kernel(const Fused& f, Kernel kernel, int64_t tasks, int64_t row_width, const scalar_t* a,
                 const scalar_t* b, scalar_t* out, int64_t threads) {
  if (threads <= 1) {
    kernel(f.slab, a, b, out, 0, tasks);
    return;
  }
  const int64_t grain = task_grain(f.slab, row_width);
  run_guided(std::min(threads, ceil_div(tasks, grain)), tasks, grain,
             [&](int64_t begin, int64_t end) { kernel(f.slab, a, b, out, begin, end); });
}

template <typename scalar_t>
void fused_forward(const Fused& f, const scalar_t* x, const scalar_t* z,
                   const acc_type<scalar_t>* S, const acc_type<scalar_t>* bias, scalar_t* y) {
  const auto& k = kernels().get<scalar_t>();
  if (channel_vector_handles(f.g, k.lanes) && !use_direct(f.slab, Pass::forward)) {
    // W generated a tile of pixels at a time inside the aggregation kernel, into a buffer in
    // L1 (channel_vector_kernels.h): the tasks of all slabs at once, no slab of W.
    const int64_t tasks = output_row_tasks(f.g), grain = task_grain(f.g, f.g.out[2]);
    run_guided(useful_threads(tasks, grain), tasks, grain, [&](int64_t begin, int64_t end) {
      k.fused_forward_tiles(f.g, f.reduced, S, bias, x, z, y, begin, end);
    });
    return;
  }
  const auto kernel = pick_kernel<scalar_t>(f.slab, Pass::forward);
  const int64_t tasks = output_row_tasks(f.slab), grain = task_grain(f.slab, f.g.out[2]);
  for_each_slab<scalar_t>(f, [&](int64_t s, scalar_t* W, int64_t threads) {
    const int64_t b = s % f.g.batch, group = s / f.g.batch;  // group-major: S_g stays cached
    const acc_type<scalar_t>* S_g = S + group * f.taps * f.reduced;
    const acc_type<scalar_t>* bias_g = bias ? bias + group * f.taps : nullptr;
    const scalar_t* z_b = z + b * f.reduced * f.pixels;
    const scalar_t* x_s = x + f.input_offset(b, group);
    scalar_t* y_s = y + f.output_offset(b, group);
    // W is generated for a few output rows at a time, right before the forward kernel reads
    // them: its working set is those rows' taps, not the slab's.
    auto rows = [&](int64_t t0, int64_t t1) {
      for (int64_t c0 = t0; c0 < t1; c0 += grain) {
        const int64_t c1 = std::min(t1, c0 + grain);
        k.span_generate(f.taps, f.reduced, S_g, bias_g, z_b, f.pixels, W, f.first_pixel(c0),
                        f.first_pixel(c1));
        kernel(f.slab, x_s, W, y_s, c0, c1);
      }
    };
    if (threads <= 1) {
      rows(0, tasks);
    } else {
      run_guided(std::min(threads, ceil_div(tasks, grain)), tasks, grain, rows);
    }
  });
}

template <typename scalar_t>
void fused_backward_input(const Fused& f, const scalar_t* gy, const scalar_t* z,
                          const acc_type<scalar_t>* S, const acc_type<scalar_t>* bias,
                          scalar_t* gx) {
  const auto& k = kernels().get<scalar_t>();
  const auto kernel = pick_kernel<scalar_t>(f.slab, Pass::backward_input);
  const int64_t tasks = input_row_tasks(f.slab);
  for_each_slab<scalar_t>(f, [&](int64_t s, scalar_t* W, int64_t threads) {
    const int64_t b = s % f.g.batch, group = s / f.g.batch;  // group-major: S_g stays cached
    generate(f, k, S, bias, z, b, group, W, threads);
    slab_kernel(f, kernel, tasks, f.g.in[2], gy + f.output_offset(b, group), W,
                gx + f.input_offset(b, group), threads);
  });
}

// Per-unit partial sums of n elements each (none when n is 0). Each unit's slice is zeroed by
// the thread that computes the unit, and add_to() sums the units in unit order (a fixed order,
// whatever thread computed which unit) with the elements split between the threads: neither
// the zeroing nor the sum is a serial pass over units * n elements (at RedNet-50's stage 4,
// 8 units of 200K span-weight gradients).
template <typename acc_t>
class UnitSums {
 public:
  UnitSums(int64_t units, int64_t n) : units_(units), n_(n), data_(new acc_t[units * n]) {}
  // Unit u's slice, zeroed; call once per unit, before accumulating into it.
  acc_t* start(int64_t u) {
    acc_t* slice = data_.get() + u * n_;
    std::fill(slice, slice + n_, acc_t(0));
    return slice;
  }
  void add_to(acc_t* dst) const {
    constexpr int64_t kBlock = 4096;
    const int64_t blocks = ceil_div(n_, kBlock);
    auto add = [&](int64_t b0, int64_t b1) {
      const int64_t i0 = b0 * kBlock, i1 = std::min(n_, b1 * kBlock);
      for (int64_t u = 0; u < units_; ++u) {
        const acc_t* slice = data_.get() + u * n_;
        for (int64_t i = i0; i < i1; ++i) dst[i] += slice[i];
      }
    };
    if (useful_threads(blocks, 1) <= 1 || units_ * n_ < (int64_t{1} << 16)) {
      add(0, blocks);
    } else {
      parallel_for(0, blocks, 1, add);
    }
  }

 private:
  int64_t units_, n_;
  std::unique_ptr<acc_t[]> data_;  // uninitialised: each unit zeroes its own slice
};

// Pixels [n0, n0 + width) of one sample's z (R rows of P pixels) transposed for
// span_grad_weight: dst row n holds pixel n0 + n's R values, zero-padded to ldz.
template <typename scalar_t, typename acc_t>
void transpose_pixels(const scalar_t* z_b, int64_t R, int64_t P, int64_t n0, int64_t width,
                      int64_t ldz, acc_t* dst) {
  for (int64_t n = 0; n < width; ++n) {
    acc_t* row = dst + n * ldz;
    for (int64_t r = 0; r < R; ++r) row[r] = static_cast<acc_t>(z_b[r * P + n0 + n]);
    std::fill(row + R, row + ldz, acc_t(0));
  }
}

// R rows of `width` accumulated values (src, rows `width` apart) converted into pixels
// [n0, n0 + width) of one sample's gz (R rows of P pixels).
template <typename scalar_t, typename acc_t>
void store_pixels(const acc_t* src, int64_t R, int64_t width, int64_t P, int64_t n0,
                  scalar_t* gz_b) {
  for (int64_t r = 0; r < R; ++r) {
    scalar_t* dst = gz_b + r * P + n0;
    const acc_t* row = src + r * width;
    for (int64_t n = 0; n < width; ++n) dst[n] = static_cast<scalar_t>(row[n]);
  }
}

// The gradients of reduced, span weight and span bias for small outputs, from the whole dW: the
// schedule of fused_backward_span when dW of every slab takes no more memory than its per-unit
// partial sums would (fewer output pixels per sample than reduced channels: RedNet's stage 4).
//   1. per group (the threads take whole groups): each sample's dW slab (the weight-gradient row
//      kernel) into dW, laid out (B, G, T, P), and at once gS and gb of the group, added to
//      sample after sample: no partial sums;
//   2. per sample and block of pixels: gz = S^T dW, one product over all G*T rows in order.
// Each element is one fixed sum, as in the per-unit schedule (in another order: the two differ
// by rounding only), independent of the thread count.
template <typename scalar_t>
void fused_backward_span_whole(const Fused& f, const scalar_t* gy, const scalar_t* x,
                               const scalar_t* z, const acc_type<scalar_t>* S, scalar_t* gz,
                               acc_type<scalar_t>* gS, acc_type<scalar_t>* gb) {
  using acc_t = acc_type<scalar_t>;
  const auto& k = kernels().get<scalar_t>();
  const auto kernel = pick_kernel<scalar_t>(f.slab, Pass::backward_weight);
  const int64_t B = f.g.batch, G = f.g.groups, T = f.taps, R = f.reduced, P = f.pixels;
  const int64_t tasks = output_row_tasks(f.slab);
  std::vector<scalar_t> dW(static_cast<size_t>(B * G * T * P));
  // z transposed per sample (P x R, rows zero-padded to ldz) for span_grad_weight.
  const int64_t ldz = ceil_div(R, kSpanPad) * kSpanPad;
  std::vector<acc_t> zT(gS ? static_cast<size_t>(B * P * ldz) : 0);
  if (gS) {
    run_guided(useful_threads(B, 1), B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        transpose_pixels(z + b * R * P, R, P, 0, P, ldz, zT.data() + b * P * ldz);
      }
    });
  }
  run_guided(useful_threads(G, 1), G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t group = g0; group < g1; ++group) {
      for (int64_t b = 0; b < B; ++b) {
        scalar_t* dW_s = dW.data() + (b * G + group) * T * P;
        kernel(f.slab, gy + f.output_offset(b, group), x + f.input_offset(b, group), dW_s, 0,
               tasks);
        if (gS || gb) {
          k.span_grad_weight(T, R, dW_s, P, 0, P, zT.data() + b * P * ldz, ldz,
                             gS ? gS + group * T * R : nullptr, gb ? gb + group * T : nullptr);
        }
      }
    }
  });
  if (!gz) return;
  constexpr int64_t kColumns = 256;  // pixels per task (a multiple of any vector)
  const int64_t blocks = ceil_div(P, kColumns);
  run_guided(useful_threads(B * blocks, 1), B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(static_cast<size_t>(R * kColumns));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, n0 = (task % blocks) * kColumns;
      const int64_t n1 = std::min(P, n0 + kColumns), width = n1 - n0;
      k.span_grad_reduced(G * T, R, S, dW.data() + b * G * T * P, P, acc.data(), width, n0, n1,
                          false);
      store_pixels(acc.data(), R, width, P, n0, gz + b * R * P);
    }
  });
}

// The gradients of reduced, span weight and span bias (any of them null: not wanted).
template <typename scalar_t>
void fused_backward_span(const Fused& f, const scalar_t* gy, const scalar_t* x, const scalar_t* z,
                         const acc_type<scalar_t>* S, scalar_t* gz, acc_type<scalar_t>* gS,
                         acc_type<scalar_t>* gb) {
  using acc_t = acc_type<scalar_t>;
  const auto& k = kernels().get<scalar_t>();
  const auto kernel = pick_kernel<scalar_t>(f.slab, Pass::backward_weight);
  const int64_t G = f.g.groups, T = f.taps, R = f.reduced, P = f.pixels;
  const int64_t OW = f.g.out[2];
  // A unit: a run of one sample's output-row tasks, of about 4096 pixels, or more where the
  // partial sums (G*T*R per unit) would otherwise outgrow the tensors. Within a unit each group
  // goes a few rows (`grain` tasks) at a time, so dW's working set is those rows' taps.
  const int64_t tasks = output_row_tasks(f.slab), grain = task_grain(f.slab, OW);
  const int64_t task_pixels = kRowsPerTask * OW;
  const int64_t unit_pixels = std::max<int64_t>(4096, G * T * R / 4);
  const int64_t unit_tasks = std::clamp<int64_t>(unit_pixels / task_pixels, 1, tasks);
  const int64_t units_per_sample = ceil_div(tasks, unit_tasks);
  const int64_t units = f.g.batch * units_per_sample;
  if (f.g.batch * P <= units * R) {
    // dW of all slabs (B*G*T*P) takes no more than the units' partial sums (units*G*T*R).
    fused_backward_span_whole(f, gy, x, z, S, gz, gS, gb);
    return;
  }
  UnitSums<acc_t> gS_units(units, gS ? G * T * R : 0), gb_units(units, gb ? G * T : 0);
  const int64_t threads = useful_threads(units, 1);
  run_guided(threads, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> dW(static_cast<size_t>(T * P));
    std::vector<acc_t> gz_unit(gz ? static_cast<size_t>(R * unit_tasks * task_pixels) : 0);
    // The unit's z transposed (pixels x R, rows zero-padded to ldz) for span_grad_weight.
    const int64_t ldz = ceil_div(R, kSpanPad) * kSpanPad;
    std::vector<acc_t> zT(gS ? static_cast<size_t>(unit_tasks * task_pixels * ldz) : 0);
    for (int64_t u = begin; u < end; ++u) {
      acc_t* gS_u = gS ? gS_units.start(u) : nullptr;
      acc_t* gb_u = gb ? gb_units.start(u) : nullptr;
      const int64_t b = u / units_per_sample;
      const int64_t t0 = (u % units_per_sample) * unit_tasks;
      const int64_t t1 = std::min(tasks, t0 + unit_tasks);
      const int64_t n0 = f.first_pixel(t0), n1 = f.first_pixel(t1);
      const int64_t width = n1 - n0;
      if (gS) transpose_pixels(z + b * R * P, R, P, n0, width, ldz, zT.data());
      for (int64_t group = 0; group < G; ++group) {
        const scalar_t* gy_s = gy + f.output_offset(b, group);
        const scalar_t* x_s = x + f.input_offset(b, group);
        for (int64_t c0 = t0; c0 < t1; c0 += grain) {
          const int64_t c1 = std::min(t1, c0 + grain);
          const int64_t m0 = f.first_pixel(c0), m1 = f.first_pixel(c1);
          kernel(f.slab, gy_s, x_s, dW.data(), c0, c1);
          if (gz) {
            k.span_grad_reduced(T, R, S + group * T * R, dW.data(), P, gz_unit.data() + (m0 - n0),
                                width, m0, m1, group > 0);
          }
          if (gS || gb) {
            k.span_grad_weight(T, R, dW.data(), P, m0, m1, zT.data() + (m0 - n0) * ldz, ldz,
                               gS ? gS_u + group * T * R : nullptr,
                               gb ? gb_u + group * T : nullptr);
          }
        }
      }
      if (gz) store_pixels(gz_unit.data(), R, width, P, n0, gz + b * R * P);
    }
  });
  if (gS) gS_units.add_to(gS);
  if (gb) gb_units.add_to(gb);
}

using detail::acc_dtype;
using detail::allocate;
using detail::allocate_zeros;
using detail::dense;
using detail::dense_as;
using detail::empty_like_layout;
using detail::info;
using detail::is_channels_last;
using detail::is_contiguous_in;
using detail::layout_of;
using detail::MemoryFormat;
using detail::Tensor;
using detail::to_dtype;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

// The span weight (G*T, R, 1...) as the channels-last kernels read it: per group (R, ldw), the
// (T, R) block transposed, columns past T zero.
Tensor transposed_span_weight(const Tensor& span_weight, int64_t groups, int64_t ldw,
                              c10::ScalarType acc) {
  const int64_t T = span_weight.size(0) / groups, R = span_weight.size(1);
  Tensor St = allocate_zeros({groups, R, ldw}, acc, span_weight);
  Tensor columns = torch::stable::narrow(St, 2, 0, T);
  torch::stable::copy_(
      columns, torch::stable::transpose(torch::stable::reshape(span_weight, {groups, T, R}), 1, 2));
  return St;
}

template <typename scalar_t>
void fused_forward_channels_last(const Fused& f, const scalar_t* x, const scalar_t* z,
                                 const acc_type<scalar_t>* St, int64_t ldw,
                                 const acc_type<scalar_t>* bias, scalar_t* y) {
  const auto& k = kernels().get<scalar_t>();
  const int64_t pixels = f.g.batch * f.pixels;
  const int64_t blocks = ceil_div(pixels, kChannelsLastPixels);
  run_guided(useful_threads(blocks, 1), blocks, 1, [&](int64_t begin, int64_t end) {
    k.fused_forward_channels_last(f.g, f.reduced, St, ldw, bias, x, z, y,
                                  begin * kChannelsLastPixels,
                                  std::min(pixels, end * kChannelsLastPixels));
  });
}

// The span weight (G*T, R, 1...) as (G*T, ldr) rows zero-padded past R.
Tensor padded_span_weight(const Tensor& span_weight, int64_t ldr, c10::ScalarType acc) {
  const int64_t rows = span_weight.size(0), R = span_weight.size(1);
  Tensor Sp = allocate_zeros({rows, ldr}, acc, span_weight);
  Tensor columns = torch::stable::narrow(Sp, 1, 0, R);
  torch::stable::copy_(columns, torch::stable::reshape(span_weight, {rows, R}));
  return Sp;
}

template <typename scalar_t>
void fused_backward_input_channels_last(const Fused& f, const scalar_t* gy, const scalar_t* z,
                                        const acc_type<scalar_t>* St, int64_t ldw,
                                        const acc_type<scalar_t>* bias, scalar_t* gx) {
  const auto& k = kernels().get<scalar_t>();
  const int64_t tasks = channels_last_input_tasks(f.g, ldw);
  run_guided(useful_threads(tasks, 1), tasks, 1, [&](int64_t begin, int64_t end) {
    k.fused_backward_input_channels_last(f.g, f.reduced, St, ldw, bias, gy, z, gx, begin, end);
  });
}

// The gradients of reduced, span weight and span bias on channels-last tensors, in units of
// output pixels whose partial sums are added in unit order (as fused_backward_span).
template <typename scalar_t>
void fused_backward_span_channels_last(const Fused& f, const scalar_t* gy, const scalar_t* x,
                                       const scalar_t* z, const acc_type<scalar_t>* Sp, int64_t ldr,
                                       scalar_t* gz, acc_type<scalar_t>* gS,
                                       acc_type<scalar_t>* gb) {
  using acc_t = acc_type<scalar_t>;
  const auto& k = kernels().get<scalar_t>();
  const int64_t G = f.g.groups, T = f.taps, R = f.reduced;
  const int64_t pixels = f.g.batch * f.pixels;
  // Units of about 4096 pixels, or more where the partial sums (G*T*R per unit) would
  // otherwise outgrow the tensors, but at least 8 units where there are pixels for them (work
  // for the threads; the split depends on the geometry only, never on the thread count).
  const int64_t unit_pixels =
      ceil_div(std::min(std::max<int64_t>(4096, G * T * R / 4), ceil_div(pixels, 8)),
               kChannelsLastPixels) *
      kChannelsLastPixels;
  const int64_t units = ceil_div(pixels, unit_pixels);
  UnitSums<acc_t> gS_units(units, gS ? G * T * R : 0), gb_units(units, gb ? G * T : 0);
  run_guided(useful_threads(units, 1), units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      k.fused_backward_span_channels_last(f.g, R, Sp, ldr, gy, x, z, gz,
                                          gS ? gS_units.start(u) : nullptr,
                                          gb ? gb_units.start(u) : nullptr, u * unit_pixels,
                                          std::min(pixels, (u + 1) * unit_pixels));
    }
  });
  if (gS) gS_units.add_to(gS);
  if (gb) gb_units.add_to(gb);
}

template <int64_t Dims>
Tensor fused_forward_cpu(Tensor input, Tensor reduced, Tensor span_weight,
                         std::optional<Tensor> span_bias, IntList kernel_size, IntList stride,
                         IntList padding, IntList dilation) {
  const detail::Window window{stride, padding, dilation};
  const auto sizes =
      detail::check_fused_forward(OpFamily<Dims>::fused_name, Dims, info(input), info(reduced),
                                  info(span_weight), info(span_bias), kernel_size, window);
  const IntList out_sizes = sizes.output;
  Tensor out = empty_like_layout(out_sizes, input);
  if (out.numel() == 0) return out;
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const auto acc = acc_dtype(input.scalar_type());
  const Tensor bias = dense_as(span_bias, acc);
  if (is_channels_last(input)) {
    // Read and written in place: z in the same layout, the output is channels-last too.
    const Tensor z = dense(reduced, layout_of(input));
    const Fused f(detail::make_fused_geometry(Dims, input.sizes(), out_sizes, kernel_size,
                                              sizes.groups, window),
                  z.size(1));
    const int64_t ldw = ceil_div(f.taps, kSpanPad) * kSpanPad;
    const Tensor St = transposed_span_weight(span_weight, f.g.groups, ldw, acc);
    INVOLUTION_DISPATCH_SUPPORTED_TYPES(input.scalar_type(), "fused_involution_cpu", [&] {
      using acc_t = acc_type<scalar_t>;
      fused_forward_channels_last<scalar_t>(
          f, input.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
          St.const_data_ptr<acc_t>(), ldw, has_bias ? bias.const_data_ptr<acc_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>());
    });
    return out;
  }
  const Tensor x = dense(input), z = dense(reduced);
  const Tensor S = dense_as(span_weight, acc);
  const bool direct = out.is_contiguous();
  Tensor y = direct ? out : allocate(out_sizes, input.scalar_type(), input);
  const Fused f(
      detail::make_fused_geometry(Dims, x.sizes(), out_sizes, kernel_size, sizes.groups, window),
      z.size(1));
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(x.scalar_type(), "fused_involution_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    fused_forward<scalar_t>(
        f, x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), S.const_data_ptr<acc_t>(),
        has_bias ? bias.const_data_ptr<acc_t>() : nullptr, y.mutable_data_ptr<scalar_t>());
  });
  if (!direct) torch::stable::copy_(out, y);
  return out;
}

template <int64_t Dims>
std::tuple<Tensor, Tensor, Tensor, Tensor> fused_backward_cpu(Tensor grad_output, Tensor input,
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
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const auto dtype = input.scalar_type();
  const auto acc = acc_dtype(dtype);
  const auto none = [&] { return allocate({0}, dtype, input); };
  Tensor gx = mask[0] ? empty_like_layout(input.sizes(), input) : none();
  Tensor gz = mask[1] ? empty_like_layout(reduced.sizes(), reduced) : none();
  Tensor gS = mask[2] ? allocate_zeros(span_weight.sizes(), acc, input) : none();
  Tensor gb = mask[3] && has_bias ? allocate_zeros({span_weight.size(0)}, acc, input) : none();
  const bool span_side = mask[1] || mask[2] || (mask[3] && has_bias);
  if (grad_output.numel() == 0 || input.numel() == 0) {
    // No output element or no input channel contributes: every gradient is zero.
    if (mask[0]) torch::stable::zero_(gx);
    if (mask[1]) torch::stable::zero_(gz);
  } else if (is_channels_last(input)) {
    // Read and written in place, in the input's layout (grad_output and reduced brought to it).
    const MemoryFormat layout = layout_of(input);
    const Tensor gy = dense(grad_output, layout), z = dense(reduced, layout);
    const Fused f(detail::make_fused_geometry(Dims, input.sizes(), gy.sizes(), kernel_size,
                                              sizes.groups, window),
                  z.size(1));
    const int64_t ldw = ceil_div(f.taps, kSpanPad) * kSpanPad;
    const int64_t ldr = ceil_div(f.reduced, kSpanPad) * kSpanPad;
    const bool gz_direct = !mask[1] || is_contiguous_in(gz, layout);
    Tensor gz_c = gz_direct ? gz : allocate(z.sizes(), dtype, z, layout);
    INVOLUTION_DISPATCH_SUPPORTED_TYPES(input.scalar_type(), "fused_involution_backward_cpu", [&] {
      using acc_t = acc_type<scalar_t>;
      if (mask[0]) {
        const Tensor St = transposed_span_weight(span_weight, f.g.groups, ldw, acc);
        const Tensor bias = dense_as(span_bias, acc);
        fused_backward_input_channels_last<scalar_t>(
            f, gy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
            St.const_data_ptr<acc_t>(), ldw, has_bias ? bias.const_data_ptr<acc_t>() : nullptr,
            gx.mutable_data_ptr<scalar_t>());
      }
      if (span_side) {
        const Tensor Sp = padded_span_weight(span_weight, ldr, acc);
        fused_backward_span_channels_last<scalar_t>(
            f, gy.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
            z.const_data_ptr<scalar_t>(), Sp.const_data_ptr<acc_t>(), ldr,
            mask[1] ? gz_c.mutable_data_ptr<scalar_t>() : nullptr,
            mask[2] ? gS.mutable_data_ptr<acc_t>() : nullptr,
            mask[3] && has_bias ? gb.mutable_data_ptr<acc_t>() : nullptr);
      }
    });
    if (!gz_direct) torch::stable::copy_(gz, gz_c);
  } else {
    const Tensor gy = dense(grad_output), x = dense(input), z = dense(reduced);
    const Tensor S = dense_as(span_weight, acc);
    const Tensor bias = dense_as(span_bias, acc);
    const Fused f(
        detail::make_fused_geometry(Dims, x.sizes(), gy.sizes(), kernel_size, sizes.groups, window),
        z.size(1));
    const bool gx_direct = !mask[0] || gx.is_contiguous();
    const bool gz_direct = !mask[1] || gz.is_contiguous();
    Tensor gx_c = gx_direct ? gx : allocate(input.sizes(), dtype, input);
    Tensor gz_c = gz_direct ? gz : allocate(reduced.sizes(), dtype, input);
    INVOLUTION_DISPATCH_SUPPORTED_TYPES(x.scalar_type(), "fused_involution_backward_cpu", [&] {
      using acc_t = acc_type<scalar_t>;
      if (mask[0]) {
        fused_backward_input<scalar_t>(f, gy.const_data_ptr<scalar_t>(),
                                       z.const_data_ptr<scalar_t>(), S.const_data_ptr<acc_t>(),
                                       has_bias ? bias.const_data_ptr<acc_t>() : nullptr,
                                       gx_c.mutable_data_ptr<scalar_t>());
      }
      if (span_side) {
        fused_backward_span<scalar_t>(f, gy.const_data_ptr<scalar_t>(),
                                      x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                                      S.const_data_ptr<acc_t>(),
                                      mask[1] ? gz_c.mutable_data_ptr<scalar_t>() : nullptr,
                                      mask[2] ? gS.mutable_data_ptr<acc_t>() : nullptr,
                                      mask[3] && has_bias ? gb.mutable_data_ptr<acc_t>() : nullptr);
      }
    });
    if (!gx_direct) torch::stable::copy_(gx, gx_c);
    if (!gz_direct) torch::stable::copy_(gz, gz_c);
  }
  if (mask[2]) gS = to_dtype(gS, dtype);
  if (mask[3] && has_bias) gb = to_dtype(gb, dtype);
  return {gx, gz, gS, gb};
}

}  // namespace
}  // namespace cpu

STABLE_TORCH_LIBRARY_IMPL(involution, CPU, m) {
  m.impl("fused_involution2d", TORCH_BOX(&cpu::fused_forward_cpu<2>));
  m.impl("_fused_involution2d_backward", TORCH_BOX(&cpu::fused_backward_cpu<2>));
  m.impl("fused_involution3d", TORCH_BOX(&cpu::fused_forward_cpu<3>));
  m.impl("_fused_involution3d_backward", TORCH_BOX(&cpu::fused_backward_cpu<3>));
}

}  // namespace involution
