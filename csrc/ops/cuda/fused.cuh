#pragma once
// CUDA kernels of the fused ops (fused_involution2d/3d): the involution kernel W = span(z) is
// made where it is used, from the reduced tensor z and the span weights S, and never written
// to memory; the backward makes it again.
//
//   W[b, g, t, o] = bias[g*T + t] + sum_r S[g*T + t, r] * z[b, r, o]     (T taps, R channels)
//   y[b, c, o]    = sum_t W[b, g(c), t, o] * x[b, c, tap(o, t)]          (as forward.cuh)
//
// Layouts (contiguous, row-major; a 2-D problem is a 3-D one with depth 1): x, grad_input
// (B, C, I...), y, grad_output (B, C, O...), z, grad_reduced (B, R, O...), S (G*T, R) and bias
// (G*T) already in the accumulation type Acc (float for the 16-bit types; the launch converts them
// once), grad_span_weight and grad_span_bias in the storage type, converted from Acc sums.
//
// Why this shape:
//   * Forward (fused_forward): a block owns kFusedTile = kThreads consecutive output pixels of
//     one sample (a thread each) and a chunk of groups. Per group it stages S_g in shared
//     memory (all threads read the same elements at once: broadcasts) and the tile's z, a
//     column per thread, once for all the groups of the chunk when R fits one chunk
//     (fused_reduced_chunk): z is what the groups share, and at RedNet's R = C/4 with 16
//     channels per group, reading z once per group would read 4x the input's bytes. A thread
//     then holds its pixel's kernel for a chunk of KT taps in registers, W[KT], with the input
//     offsets of those taps, both indexed only by unrolled loops (no local memory), and
//     aggregates the group's channels one after another: per channel KT loads and KT
//     multiply-adds, no more registers. KT is a template argument (9, 27, 49; 9, 27 in double:
//     fused_with_tap_chunk) so that RedNet's 3x3 and 7x7 kernels are one chunk; the last
//     chunk is padded with taps of kernel value 0 that read no input, so the unrolled loops
//     have no per-tap conditions. More taps run chunk after chunk, each kernel value still made
//     once: the per-channel sums go through the output (or an Acc buffer of its size for the half
//     types) between chunks, read back by the thread that wrote them.
//   * Input gradient (fused_backward_input): the gather form, as backward_input.cuh's (no
//     atomics): a thread owns an input pixel, finds the output pixel of each tap (exact
//     division, walked by subtraction: OutputTaps), remakes W there from S_g (shared) and z
//     (read from global memory: the output pixels of a tile's taps are scattered for a general
//     stride and dilation), and sums W * grad_output over the taps, in tap chunks as the
//     forward. At stride 1 each kernel value is made once, for the one input pixel it reaches
//     through its tap: as often as the forward makes it.
//   * grad_reduced (fused_backward_reduced): dW[g, t, o] = sum_{c in g} gy[c, o] * x[c, tap]
//     is made one (tap, pixel) at a time and contracted at once with a block of S_g's columns:
//     a thread owns an output pixel and a block of fused_reduced_chunk channels of
//     grad_reduced in registers, so it sums over every group and tap itself (no atomics); dW
//     is remade for every block of channels (R / 32 times in float, cheap next to the
//     R * G * T multiply-adds of the contraction).
//   * grad_span_weight and grad_span_bias (fused_backward_span_partials, then
//     fused_reduce_partials): sums over every (sample, pixel), so the pixels are cut into a
//     number of splits fixed by the sizes alone (fused_span_splits); a block takes (split,
//     group, 32 taps, 32 columns of [z, 1]), stages dW and z of 32 pixels at a time in shared
//     memory, and each thread sums 8 (tap, column) products over the pixels; the per-split
//     partial sums go to a buffer (at most kSpanPartialBudget elements), which a second kernel
//     adds up split after split. The bias is the column of ones appended to z. No atomics:
//     every result is the same fixed sum on every run, grid and device.
// Everything accumulates in Acc, and a tap outside the input enters every sum as w * 0 (or
// gy * 0), as in forward.cuh and backward_weight.cuh. Offsets within a sample are 32-bit, those
// of samples, channels and the buffer 64-bit; no kernel divides 64-bit numbers (nvcc would
// call out of line, with a stack frame). fused_kernels_apply states the limits.
// Not tuned (not yet run on a GPU): a correct, deterministic result for every geometry the
// unfused op takes comes first. kFusedBlocksPerSM lets ptxas give the kernels up to 255
// registers (left to choose, it took 64-128 for some and spilled a few values).
//
// Shared memory goes through block_sync.cuh, so tests/cpp/emulate_fused_kernels.cpp checks
// the barriers on the host (make emulate), with every kernel against a loop reference.

#include <cstdint>
#include <type_traits>

#include "block_sync.cuh"
#include "common.cuh"

namespace involution {
namespace cuda {

constexpr int kFusedTile = kThreads;  // pixels per block of fused_forward/_backward_input/_reduced
constexpr int kSpanPixels = 32;       // pixels staged at a time by fused_backward_span_partials
constexpr int kSpanTaps = 32;         // taps and columns of one fused_backward_span_partials block
constexpr int kSpanColumns = 32;
constexpr int kSpanLanes = kThreads / kSpanPixels;        // threads per pixel (4)
constexpr int kSpanPerThread = kSpanTaps / kSpanLanes;    // products a thread sums (8)
constexpr int64_t kSpanPartialBudget = int64_t(1) << 23;  // elements of the split buffer
constexpr int64_t kSpanMaxSplits = 1024;
constexpr int64_t kFusedTargetBlocks = 1024;  // below this, fewer groups per block
// Blocks per SM in the launch bounds of the fused kernels (not fused_reduce_partials): up to
// 255 registers a thread. Left to itself ptxas picked 64-128 for some instances and spilled a
// few values (a stack frame, which cuda_report.py rejects); at KT = 49 in float a thread holds
// 49 kernel values, 49 offsets and 49 loads in flight.
constexpr int kFusedBlocksPerSM = 2;

// Channels of z (or S's columns) a block stages at a time, and channels of grad_reduced a
// thread accumulates: 32 (float) or 16 (double) keep the shared memory below 48 KiB.
template <typename Acc>
constexpr int fused_reduced_chunk() {
  return sizeof(Acc) > 4 ? 16 : 32;
}

// The sizes of a fused problem as 32-bit integers (fused_kernels_apply: all below 2^31).
struct FusedDims {
  int32_t in[3], out[3], kernel[3], stride[3], padding[3], dilation[3];
  int32_t batch, channels, groups, cpg, taps, reduced, in_volume, out_volume;
};

// Whether the fused CUDA kernels take this problem: the unfused kernels' limits
// (cuda_kernels_apply), R, G*T*(R+1) (the span weights and a split's partial sums) and each
// spatial volume plus a tile below 2^31.
__host__ inline bool fused_kernels_apply(const Geometry& g, int64_t reduced) {
  const int64_t limit = (int64_t(1) << 31) - 1;
  return cuda_kernels_apply(g) && g.batch <= limit && reduced < limit &&
         g.groups * g.taps() <= limit && g.groups * g.taps() * (reduced + 1) <= limit &&
         g.in_volume() + kFusedTile <= limit && g.out_volume() + kFusedTile <= limit;
}

__host__ inline FusedDims fused_dims(const Geometry& g, int64_t reduced) {
  FusedDims d{};
  for (int a = 0; a < 3; ++a) {
    d.in[a] = static_cast<int32_t>(g.in[a]);
    d.out[a] = static_cast<int32_t>(g.out[a]);
    d.kernel[a] = static_cast<int32_t>(g.kernel[a]);
    d.stride[a] = static_cast<int32_t>(g.stride[a]);
    d.padding[a] = static_cast<int32_t>(g.padding[a]);
    d.dilation[a] = static_cast<int32_t>(g.dilation[a]);
  }
  d.batch = static_cast<int32_t>(g.batch);
  d.channels = static_cast<int32_t>(g.channels);
  d.groups = static_cast<int32_t>(g.groups);
  d.cpg = static_cast<int32_t>(g.channels / g.groups);
  d.taps = static_cast<int32_t>(g.taps());
  d.reduced = static_cast<int32_t>(reduced);
  d.in_volume = static_cast<int32_t>(g.in_volume());
  d.out_volume = static_cast<int32_t>(g.out_volume());
  return d;
}

__host__ __device__ inline int32_t fused_ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

// Calls f(std::integral_constant<int, KT>()) with the tap chunk of fused_forward and
// fused_backward_input for T taps: 9 (3x3), 27 (3x3x3, 5x5) or 49 (7x7, and chunks of 49
// beyond); in double, 9 or 27 (and chunks of 27), to keep the kernel values, offsets and loads
// of a chunk in registers.
template <typename Acc, typename F>
__host__ void fused_with_tap_chunk(int32_t taps, const F& f) {
  if (taps <= 9) {
    f(std::integral_constant<int, 9>());
  } else if constexpr (sizeof(Acc) > 4) {
    f(std::integral_constant<int, 27>());
  } else if (taps <= 27) {
    f(std::integral_constant<int, 27>());
  } else {
    f(std::integral_constant<int, 49>());
  }
}

// Groups per block of fused_forward and fused_backward_input: all of them (z is staged once
// for all), halved while the grid would have fewer than kFusedTargetBlocks blocks.
__host__ inline int32_t fused_groups_per_block(int64_t batch, int32_t pixels, int32_t groups) {
  const int64_t tiles = fused_ceil_div(pixels, kFusedTile);
  int32_t gpb = groups > 0 ? groups : 1;
  while (gpb > 1 && batch * tiles * fused_ceil_div(groups, gpb) < kFusedTargetBlocks) {
    gpb = (gpb + 1) / 2;
  }
  return gpb;
}

__host__ inline unsigned fused_grid_size(int64_t n, int64_t cap) {
  return static_cast<unsigned>(n < 1 ? 1 : (n < cap ? n : cap));
}

// The grid of fused_forward / fused_backward_input (pixels = output / input volume): tiles
// along x, samples along y, chunks of groups along z; the kernels stride over the rest.
__host__ inline dim3 fused_tile_grid(int64_t batch, int32_t pixels, int32_t groups, int32_t gpb) {
  return dim3(fused_grid_size(fused_ceil_div(pixels, kFusedTile), 65535),
              fused_grid_size(batch, 65535), fused_grid_size(fused_ceil_div(groups, gpb), 65535));
}

// The pixels of the batch cut into `count` splits for the span weight gradient: with
// `parts` == 1 split s is samples [s * samples, (s + 1) * samples); otherwise split s is part
// s % parts of sample s / parts, the chunks of kSpanPixels pixels
// [part * chunks, (part + 1) * chunks). Fixed by the sizes alone, so the sums are too.
struct SpanSplits {
  int32_t samples, parts, chunks, count;
};
__host__ inline SpanSplits fused_span_splits(int64_t batch, int32_t pixels, int64_t partial_row,
                                             int64_t max_splits = kSpanMaxSplits,
                                             int64_t budget = kSpanPartialBudget) {
  const int32_t per_sample = fused_ceil_div(pixels, kSpanPixels);
  if (batch <= 0 || per_sample <= 0) return {1, 1, per_sample, 0};
  int64_t target = budget / (partial_row > 0 ? partial_row : 1);
  if (target > max_splits) target = max_splits;
  if (target > batch * per_sample) target = batch * per_sample;
  if (target < 1) target = 1;
  if (batch >= target) {
    const int64_t samples = (batch + target - 1) / target;
    return {static_cast<int32_t>(samples), 1, per_sample,
            static_cast<int32_t>((batch + samples - 1) / samples)};
  }
  int32_t parts = static_cast<int32_t>((target + batch - 1) / batch);
  if (parts > per_sample) parts = per_sample;
  const int32_t chunks = fused_ceil_div(per_sample, parts);
  parts = fused_ceil_div(per_sample, chunks);
  return {1, parts, chunks, static_cast<int32_t>(batch * parts)};
}

// The grid of fused_backward_span_partials: splits along x, groups along y, (tap block,
// column block) pairs along z.
__host__ inline dim3 fused_span_grid(const FusedDims& d, const SpanSplits& s, int32_t columns) {
  const int64_t blocks =
      int64_t(fused_ceil_div(d.taps, kSpanTaps)) * fused_ceil_div(columns, kSpanColumns);
  return dim3(fused_grid_size(s.count, 65535), fused_grid_size(d.groups, 65535),
              fused_grid_size(blocks, 65535));
}

// The taps of one output pixel, in order (width fastest), and the input offset each reads
// (-1: outside the input, read as zero). 64-bit coordinates: o*s - p + k*d may pass 2^31.
struct InputTaps {
  int64_t i0, i1, i2, start1, start2;
  int32_t a1, a2;

  __host__ __device__ void reset(const FusedDims& d, int32_t o0, int32_t o1, int32_t o2) {
    i0 = int64_t(o0) * d.stride[0] - d.padding[0];
    start1 = i1 = int64_t(o1) * d.stride[1] - d.padding[1];
    start2 = i2 = int64_t(o2) * d.stride[2] - d.padding[2];
    a1 = a2 = 0;
  }
  __host__ __device__ int32_t offset(const FusedDims& d) const {
    const bool inside = static_cast<uint64_t>(i0) < static_cast<uint64_t>(d.in[0]) &&
                        static_cast<uint64_t>(i1) < static_cast<uint64_t>(d.in[1]) &&
                        static_cast<uint64_t>(i2) < static_cast<uint64_t>(d.in[2]);
    return inside ? (static_cast<int32_t>(i0) * d.in[1] + static_cast<int32_t>(i1)) * d.in[2] +
                        static_cast<int32_t>(i2)
                  : -1;
  }
  __host__ __device__ void next(const FusedDims& d) {
    i2 += d.dilation[2];
    if (++a2 == d.kernel[2]) {
      a2 = 0;
      i2 = start2;
      i1 += d.dilation[1];
      if (++a1 == d.kernel[1]) {
        a1 = 0;
        i1 = start1;
        i0 += d.dilation[0];
      }
    }
  }
};

// One axis of the taps of an input pixel i: the output index o = (i + p - a*d) / s of tap a,
// valid when the division is exact; quotient and remainder advance by subtraction.
struct OutputAxis {
  int64_t o;
  int32_t rem, dq, dr, s;

  __host__ __device__ void reset(int32_t i, int32_t p, int32_t d, int32_t s_) {
    // i + p < 2^32: a 32-bit unsigned division.
    const uint32_t n = static_cast<uint32_t>(i) + static_cast<uint32_t>(p);
    o = static_cast<int64_t>(n / static_cast<uint32_t>(s_));
    rem = static_cast<int32_t>(n % static_cast<uint32_t>(s_));
    dq = d / s_;
    dr = d % s_;
    s = s_;
  }
  __host__ __device__ bool hits(int32_t out) const { return rem == 0 && o >= 0 && o < out; }
  __host__ __device__ void next() {
    o -= dq;
    rem -= dr;
    if (rem < 0) {
      rem += s;
      --o;
    }
  }
};

// The taps of one input pixel, in order, and the output offset that reads the pixel through
// each (-1: none).
struct OutputTaps {
  OutputAxis w0, w1, w2, start1, start2;
  int32_t a1, a2;

  __host__ __device__ void reset(const FusedDims& d, int32_t i0, int32_t i1, int32_t i2) {
    w0.reset(i0, d.padding[0], d.dilation[0], d.stride[0]);
    w1.reset(i1, d.padding[1], d.dilation[1], d.stride[1]);
    w2.reset(i2, d.padding[2], d.dilation[2], d.stride[2]);
    start1 = w1;
    start2 = w2;
    a1 = a2 = 0;
  }
  __host__ __device__ int32_t offset(const FusedDims& d) const {
    return w0.hits(d.out[0]) && w1.hits(d.out[1]) && w2.hits(d.out[2])
               ? (static_cast<int32_t>(w0.o) * d.out[1] + static_cast<int32_t>(w1.o)) * d.out[2] +
                     static_cast<int32_t>(w2.o)
               : -1;
  }
  __host__ __device__ void next(const FusedDims& d) {
    w2.next();
    if (++a2 == d.kernel[2]) {
      a2 = 0;
      w2 = start2;
      w1.next();
      if (++a1 == d.kernel[1]) {
        a1 = 0;
        w1 = start1;
        w0.next();
      }
    }
  }
};

// Pixel `p` of a volume of sizes n (0 = depth) as its three indices.
__host__ __device__ inline void fused_split_pixel(int32_t p, const int32_t (&n)[3], int32_t& p0,
                                                  int32_t& p1, int32_t& p2) {
  p2 = p % n[2];
  p1 = p / n[2] % n[1];
  p0 = p / n[2] / n[1];
}

// sum_{c < cpg} gy[c * P] * x[c * Q + off] (x read as zero where off < 0): dW of one tap and
// pixel, gy and x at the group's first channel.
template <typename T, typename Acc>
__device__ __forceinline__ Acc fused_tap_gradient(const FusedDims& d, const T* __restrict__ gy,
                                                  const T* __restrict__ x, int32_t off) {
  Acc sum = Acc(0);
  for (int32_t c = 0; c < d.cpg; ++c, gy += d.out_volume, x += d.in_volume) {
    sum += widen<Acc>(*gy) * (off >= 0 ? widen<Acc>(x[off]) : Acc(0));
  }
  return sum;
}

// ------------------------------------------------------------------------------------------
// Forward.

// Shared memory of the span weights of one chunk: ss[k * fused_tap_pitch(KT) + t] for a
// reduced channel k and a tap t of the chunk (taps contiguous, so that nvcc may read four at a
// time: every thread reads the same ones).
constexpr int fused_tap_pitch(int kt) { return (kt + 3) / 4 * 4; }

// Stages S_g's rows [t0, t0 + KT) (zeros past the last tap), columns [r0, r0 + nr), into ss.
template <typename Acc, int KT>
__device__ __forceinline__ void fused_stage_span(const FusedDims& d, const Acc* __restrict__ Sg,
                                                 INVOLUTION_SHARED_PTR(Acc) ss, int32_t t0,
                                                 int32_t r0, int32_t nr) {
  const int32_t nt = d.taps - t0 < KT ? d.taps - t0 : KT;
  for (int32_t e = static_cast<int32_t>(threadIdx.x); e < KT * nr; e += kThreads) {
    const int32_t t = e / nr, k = e - t * nr;  // consecutive threads read consecutive columns
    ss[k * fused_tap_pitch(KT) + t] = t < nt ? Sg[int64_t(t0 + t) * d.reduced + r0 + k] : Acc(0);
  }
}

// The group's kernel for the taps [t0, t0 + KT) of the thread's output pixel, into W (zero
// past the last tap): bias_g (null: none) plus S_g (Sg: the group's (T, R) rows, staged chunk
// by chunk in ss) times z (zs: the thread's own column of z, staged here unless z_staged says
// it already is). Every thread of the block calls it (it has barriers); `active` ones compute.
template <typename T, typename Acc, int KT, int KR>
__device__ __forceinline__ void fused_make_kernel(
    const FusedDims& d, Acc (&W)[KT], const Acc* __restrict__ Sg, const Acc* __restrict__ bias_g,
    const T* __restrict__ zo, INVOLUTION_SHARED_PTR(Acc) zs, INVOLUTION_SHARED_PTR(Acc) ss,
    int32_t t0, bool active, bool& z_staged) {
  constexpr int kPitch = fused_tap_pitch(KT);
  const int32_t tid = static_cast<int32_t>(threadIdx.x);
  const int32_t R = d.reduced, P = d.out_volume;
  const int32_t nt = d.taps - t0 < KT ? d.taps - t0 : KT;
#pragma unroll
  for (int t = 0; t < KT; ++t) W[t] = t < nt && bias_g != nullptr ? bias_g[t0 + t] : Acc(0);
  for (int32_t r0 = 0; r0 < R; r0 += KR) {
    const int32_t nr = R - r0 < KR ? R - r0 : KR;
    block_barrier();  // every thread is done with ss of the last chunk
    fused_stage_span<Acc, KT>(d, Sg, ss, t0, r0, nr);
    if (!z_staged && active) {  // the thread's own column: no other thread reads it
      for (int32_t k = 0; k < nr; ++k) {
        zs[k * kFusedTile + tid] = widen<Acc>(zo[int64_t(r0 + k) * P]);
      }
    }
    block_barrier();  // ss is complete
    if (active) {
#pragma unroll 1
      for (int32_t k = 0; k < nr; ++k) {
        const Acc zk = zs[k * kFusedTile + tid];
#pragma unroll
        for (int t = 0; t < KT; ++t) W[t] += ss[k * kPitch + t] * zk;
      }
    }
  }
  // With one chunk of z, zs keeps it for the other groups and tap chunks of the tile.
  if (R <= KR) z_staged = true;
}

// y (and, between tap chunks, ybuf: y itself when T is Acc, else a buffer of y's size in Acc)
// for every (sample, group, output pixel).
template <typename T, typename Acc, int KT>
__global__ void __launch_bounds__(kThreads, kFusedBlocksPerSM)
    fused_forward(const FusedDims d, int32_t groups_per_block, const T* __restrict__ x,
                  const T* __restrict__ z, const Acc* __restrict__ S, const Acc* __restrict__ bias,
                  T* y, Acc* ybuf) {
  constexpr int KR = fused_reduced_chunk<Acc>();
  INVOLUTION_SHARED_ARRAY(Acc, zs, KR * kFusedTile);           // z: a column per thread
  INVOLUTION_SHARED_ARRAY(Acc, ss, KR * fused_tap_pitch(KT));  // S_g, one chunk
  const int32_t tid = static_cast<int32_t>(threadIdx.x);
  const int32_t P = d.out_volume, Q = d.in_volume;
  const int32_t tiles = fused_ceil_div(P, kFusedTile);
  const int32_t chunks = fused_ceil_div(d.groups, groups_per_block);
  for (int32_t b = static_cast<int32_t>(blockIdx.y); b < d.batch;
       b += static_cast<int32_t>(gridDim.y)) {
    for (int32_t chunk = static_cast<int32_t>(blockIdx.z); chunk < chunks;
         chunk += static_cast<int32_t>(gridDim.z)) {
      const int32_t g0 = chunk * groups_per_block;
      const int32_t g1 = groups_per_block < d.groups - g0 ? g0 + groups_per_block : d.groups;
      for (int32_t tile = static_cast<int32_t>(blockIdx.x); tile < tiles;
           tile += static_cast<int32_t>(gridDim.x)) {
        const int32_t o = tile * kFusedTile + tid;
        const bool active = o < P;
        int32_t o0 = 0, o1 = 0, o2 = 0;
        if (active) fused_split_pixel(o, d.out, o0, o1, o2);
        const T* zo = z + int64_t(b) * d.reduced * P + o;
        bool z_staged = false;
        for (int32_t g = g0; g < g1; ++g) {
          const int64_t channel0 = int64_t(b) * d.channels + int64_t(g) * d.cpg;
          const Acc* Sg = S + int64_t(g) * d.taps * d.reduced;
          const Acc* bias_g = bias != nullptr ? bias + int64_t(g) * d.taps : nullptr;
          InputTaps taps;
          taps.reset(d, o0, o1, o2);
          for (int32_t t0 = 0; t0 < d.taps; t0 += KT) {
            Acc W[KT];
            int32_t off[KT];  // input offset of each tap, -1: outside the input (or past T)
#pragma unroll
            for (int t = 0; t < KT; ++t) {
              off[t] = t0 + t < d.taps ? taps.offset(d) : -1;
              taps.next(d);
            }
            fused_make_kernel<T, Acc, KT, KR>(d, W, Sg, bias_g, zo, zs, ss, t0, active, z_staged);
            if (active) {
              const bool first = t0 == 0, last = t0 + KT >= d.taps;
              const T* xc = x + channel0 * Q;
              const int64_t yo = channel0 * P + o;
#pragma unroll 1
              for (int32_t c = 0; c < d.cpg; ++c, xc += Q) {
                Acc acc = first ? Acc(0) : ybuf[yo + int64_t(c) * P];
#pragma unroll
                for (int t = 0; t < KT; ++t) {
                  acc += W[t] * (off[t] >= 0 ? widen<Acc>(xc[off[t]]) : Acc(0));
                }
                if (last) {
                  y[yo + int64_t(c) * P] = static_cast<T>(acc);
                } else {
                  ybuf[yo + int64_t(c) * P] = acc;
                }
              }
            }
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Input gradient.

// gx (and, between tap chunks, gxbuf, as fused_forward's ybuf) for every (sample, group,
// input pixel).
template <typename T, typename Acc, int KT>
__global__ void __launch_bounds__(kThreads, kFusedBlocksPerSM)
    fused_backward_input(const FusedDims d, int32_t groups_per_block, const T* __restrict__ gy,
                         const T* __restrict__ z, const Acc* __restrict__ S,
                         const Acc* __restrict__ bias, T* gx, Acc* gxbuf) {
  constexpr int KR = fused_reduced_chunk<Acc>();
  constexpr int kPitch = fused_tap_pitch(KT);
  INVOLUTION_SHARED_ARRAY(Acc, ss, KR * kPitch);
  const int32_t P = d.out_volume, Q = d.in_volume, R = d.reduced;
  const int32_t tiles = fused_ceil_div(Q, kFusedTile);
  const int32_t chunks = fused_ceil_div(d.groups, groups_per_block);
  for (int32_t b = static_cast<int32_t>(blockIdx.y); b < d.batch;
       b += static_cast<int32_t>(gridDim.y)) {
    for (int32_t chunk = static_cast<int32_t>(blockIdx.z); chunk < chunks;
         chunk += static_cast<int32_t>(gridDim.z)) {
      const int32_t g0 = chunk * groups_per_block;
      const int32_t g1 = groups_per_block < d.groups - g0 ? g0 + groups_per_block : d.groups;
      for (int32_t tile = static_cast<int32_t>(blockIdx.x); tile < tiles;
           tile += static_cast<int32_t>(gridDim.x)) {
        const int32_t i = tile * kFusedTile + static_cast<int32_t>(threadIdx.x);
        const bool active = i < Q;
        int32_t i0 = 0, i1 = 0, i2 = 0;
        if (active) fused_split_pixel(i, d.in, i0, i1, i2);
        const T* zb = z + int64_t(b) * R * P;
        for (int32_t g = g0; g < g1; ++g) {
          const int64_t channel0 = int64_t(b) * d.channels + int64_t(g) * d.cpg;
          const Acc* Sg = S + int64_t(g) * d.taps * R;
          const Acc* bias_g = bias != nullptr ? bias + int64_t(g) * d.taps : nullptr;
          OutputTaps taps;
          taps.reset(d, i0, i1, i2);
          for (int32_t t0 = 0; t0 < d.taps; t0 += KT) {
            const int32_t nt = d.taps - t0 < KT ? d.taps - t0 : KT;
            Acc W[KT];        // the kernel at the output pixel of each tap
            int32_t off[KT];  // that output pixel, -1: no output pixel reads i there (or past T)
#pragma unroll
            for (int t = 0; t < KT; ++t) {
              off[t] = t < nt ? taps.offset(d) : -1;
              taps.next(d);
              W[t] = t < nt && bias_g != nullptr ? bias_g[t0 + t] : Acc(0);
            }
            for (int32_t r0 = 0; r0 < R; r0 += KR) {
              const int32_t nr = R - r0 < KR ? R - r0 : KR;
              block_barrier();  // every thread is done with ss of the last chunk
              fused_stage_span<Acc, KT>(d, Sg, ss, t0, r0, nr);
              block_barrier();  // ss is complete
              if (active) {
#pragma unroll 1
                for (int32_t k = 0; k < nr; ++k) {
                  const T* zk = zb + int64_t(r0 + k) * P;
#pragma unroll
                  for (int t = 0; t < KT; ++t) {
                    W[t] += ss[k * kPitch + t] * (off[t] >= 0 ? widen<Acc>(zk[off[t]]) : Acc(0));
                  }
                }
              }
            }
            if (active) {
              const bool first = t0 == 0, last = t0 + KT >= d.taps;
              const T* gyc = gy + channel0 * P;
              const int64_t xo = channel0 * Q + i;
#pragma unroll 1
              for (int32_t c = 0; c < d.cpg; ++c, gyc += P) {
                Acc acc = first ? Acc(0) : gxbuf[xo + int64_t(c) * Q];
#pragma unroll
                for (int t = 0; t < KT; ++t) {
                  if (off[t] >= 0) acc += W[t] * widen<Acc>(gyc[off[t]]);
                }
                if (last) {
                  gx[xo + int64_t(c) * Q] = static_cast<T>(acc);
                } else {
                  gxbuf[xo + int64_t(c) * Q] = acc;
                }
              }
            }
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// grad_reduced[b, r, o] = sum_g sum_t S[g*T + t, r] * dW[b, g, t, o].

constexpr int kReducedTaps = 32;  // taps of S_g staged at a time

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads, kFusedBlocksPerSM)
    fused_backward_reduced(const FusedDims d, const T* __restrict__ gy, const T* __restrict__ x,
                           const Acc* __restrict__ S, T* __restrict__ gz) {
  constexpr int KR = fused_reduced_chunk<Acc>();
  INVOLUTION_SHARED_ARRAY(Acc, ss, kReducedTaps * KR);
  const int32_t tid = static_cast<int32_t>(threadIdx.x);
  const int32_t P = d.out_volume, T_ = d.taps, R = d.reduced;
  const int32_t tiles = fused_ceil_div(P, kFusedTile);
  for (int32_t b = static_cast<int32_t>(blockIdx.y); b < d.batch;
       b += static_cast<int32_t>(gridDim.y)) {
    for (int32_t tile = static_cast<int32_t>(blockIdx.x); tile < tiles;
         tile += static_cast<int32_t>(gridDim.x)) {
      const int32_t o = tile * kFusedTile + tid;
      const bool active = o < P;
      int32_t o0 = 0, o1 = 0, o2 = 0;
      if (active) fused_split_pixel(o, d.out, o0, o1, o2);
      for (int32_t r0 = 0; r0 < R; r0 += KR) {
        const int32_t nr = R - r0 < KR ? R - r0 : KR;
        Acc acc[KR];
#pragma unroll
        for (int k = 0; k < KR; ++k) acc[k] = Acc(0);
        for (int32_t g = 0; g < d.groups; ++g) {
          const int64_t channel0 = int64_t(b) * d.channels + int64_t(g) * d.cpg;
          const T* gyg = gy + channel0 * P + o;
          const T* xg = x + channel0 * d.in_volume;
          InputTaps taps;
          taps.reset(d, o0, o1, o2);
          for (int32_t t0 = 0; t0 < T_; t0 += kReducedTaps) {
            const int32_t nt = T_ - t0 < kReducedTaps ? T_ - t0 : kReducedTaps;
            const int64_t row0 = int64_t(g) * T_ + t0;
            block_barrier();  // every thread is done with ss of the last chunk
            for (int32_t e = tid; e < nt * nr; e += kThreads) {
              const int32_t t = e / nr, k = e - t * nr;
              ss[t * KR + k] = S[(row0 + t) * R + r0 + k];
            }
            block_barrier();  // ss is complete
            if (active) {
              for (int32_t t = 0; t < nt; ++t) {
                const Acc dw = fused_tap_gradient<T, Acc>(d, gyg, xg, taps.offset(d));
                taps.next(d);
#pragma unroll
                for (int k = 0; k < KR; ++k) {
                  if (k < nr) acc[k] += ss[t * KR + k] * dw;
                }
              }
            }
          }
        }
        if (active) {
          T* gzp = gz + (int64_t(b) * R + r0) * P + o;
#pragma unroll
          for (int k = 0; k < KR; ++k) {
            if (k < nr) gzp[k * int64_t(P)] = static_cast<T>(acc[k]);
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// grad_span_weight and grad_span_bias: per-split partial sums
//   partial[s, g*T + t, j] = sum over the split's pixels of dW[b, g, t, o] * e[b, col0 + j, o]
// where e is z with a channel of ones appended (e[R] = 1: the bias), for j < columns.

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads, kFusedBlocksPerSM)
    fused_backward_span_partials(const FusedDims d, SpanSplits splits, int32_t col0,
                                 int32_t columns, const T* __restrict__ gy, const T* __restrict__ x,
                                 const T* __restrict__ z, Acc* __restrict__ partial) {
  constexpr int kPitch = kSpanPixels + 1;
  INVOLUTION_SHARED_ARRAY(Acc, dws, kSpanTaps * kPitch);    // dW: taps x pixels
  INVOLUTION_SHARED_ARRAY(Acc, es, kSpanColumns * kPitch);  // e: columns x pixels
  const int32_t tid = static_cast<int32_t>(threadIdx.x);
  // Staging: a thread takes pixel p and the taps and columns lane + kSpanLanes * u. Summing:
  // column j and the taps lane + kSpanLanes * u, u < kSpanPerThread.
  const int32_t p = tid % kSpanPixels, lane = tid / kSpanPixels;
  const int32_t j = tid % kSpanColumns;
  const int32_t P = d.out_volume, T_ = d.taps, R = d.reduced;
  const int32_t per_sample = fused_ceil_div(P, kSpanPixels);
  const int32_t tap_blocks = fused_ceil_div(T_, kSpanTaps);
  const int32_t blocks = tap_blocks * fused_ceil_div(columns, kSpanColumns);
  const int64_t rows = int64_t(d.groups) * T_;
  for (int32_t g = static_cast<int32_t>(blockIdx.y); g < d.groups;
       g += static_cast<int32_t>(gridDim.y)) {
    for (int32_t block = static_cast<int32_t>(blockIdx.z); block < blocks;
         block += static_cast<int32_t>(gridDim.z)) {
      const int32_t t0 = block % tap_blocks * kSpanTaps;
      const int32_t j0 = block / tap_blocks * kSpanColumns;
      const int32_t nt = T_ - t0 < kSpanTaps ? T_ - t0 : kSpanTaps;
      const int32_t nj = columns - j0 < kSpanColumns ? columns - j0 : kSpanColumns;
      for (int32_t s = static_cast<int32_t>(blockIdx.x); s < splits.count;
           s += static_cast<int32_t>(gridDim.x)) {
        int32_t b0, b1, q0, q1;  // chunks of kSpanPixels pixels of each sample
        if (splits.parts == 1) {
          b0 = s * splits.samples;
          b1 = splits.samples < d.batch - b0 ? b0 + splits.samples : d.batch;
          q0 = 0;
          q1 = per_sample;
        } else {
          b0 = s / splits.parts;
          b1 = b0 + 1;
          q0 = s % splits.parts * splits.chunks;
          q1 = q0 + splits.chunks < per_sample ? q0 + splits.chunks : per_sample;
        }
        Acc acc[kSpanPerThread];
#pragma unroll
        for (int u = 0; u < kSpanPerThread; ++u) acc[u] = Acc(0);
        for (int32_t b = b0; b < b1; ++b) {
          const int64_t channel0 = int64_t(b) * d.channels + int64_t(g) * d.cpg;
          for (int32_t q = q0; q < q1; ++q) {
            const int32_t n0 = q * kSpanPixels;
            const int32_t np = P - n0 < kSpanPixels ? P - n0 : kSpanPixels;
            block_barrier();  // every thread is done with dws and es of the last pixels
            if (p < np) {
              const int32_t o = n0 + p;
              int32_t o0, o1, o2;
              fused_split_pixel(o, d.out, o0, o1, o2);
              const T* gyo = gy + channel0 * P + o;
              const T* xg = x + channel0 * d.in_volume;
              for (int32_t t = lane; t < nt; t += kSpanLanes) {
                const int32_t a = t0 + t;
                const int32_t a2 = a % d.kernel[2], a1 = a / d.kernel[2] % d.kernel[1],
                              a0 = a / d.kernel[2] / d.kernel[1];
                const int64_t i0 =
                    int64_t(o0) * d.stride[0] - d.padding[0] + int64_t(a0) * d.dilation[0];
                const int64_t i1 =
                    int64_t(o1) * d.stride[1] - d.padding[1] + int64_t(a1) * d.dilation[1];
                const int64_t i2 =
                    int64_t(o2) * d.stride[2] - d.padding[2] + int64_t(a2) * d.dilation[2];
                const bool inside = static_cast<uint64_t>(i0) < static_cast<uint64_t>(d.in[0]) &&
                                    static_cast<uint64_t>(i1) < static_cast<uint64_t>(d.in[1]) &&
                                    static_cast<uint64_t>(i2) < static_cast<uint64_t>(d.in[2]);
                const int32_t off =
                    inside ? (static_cast<int32_t>(i0) * d.in[1] + static_cast<int32_t>(i1)) *
                                     d.in[2] +
                                 static_cast<int32_t>(i2)
                           : -1;
                dws[t * kPitch + p] = fused_tap_gradient<T, Acc>(d, gyo, xg, off);
              }
              for (int32_t k = lane; k < nj; k += kSpanLanes) {
                const int32_t r = col0 + j0 + k;
                es[k * kPitch + p] = r < R ? widen<Acc>(z[(int64_t(b) * R + r) * P + o]) : Acc(1);
              }
            }
            block_barrier();  // dws and es are complete
            if (j < nj) {
              for (int32_t n = 0; n < np; ++n) {
                const Acc e = es[j * kPitch + n];
#pragma unroll
                for (int u = 0; u < kSpanPerThread; ++u) {
                  const int32_t t = lane + kSpanLanes * u;
                  if (t < nt) acc[u] += dws[t * kPitch + n] * e;
                }
              }
            }
          }
        }
        if (j < nj) {
          Acc* out = partial + (int64_t(s) * rows + int64_t(g) * T_ + t0) * columns + j0 + j;
#pragma unroll
          for (int u = 0; u < kSpanPerThread; ++u) {
            const int32_t t = lane + kSpanLanes * u;
            if (t < nt) out[int64_t(t) * columns] = acc[u];
          }
        }
      }
    }
  }
}

// grad_span_weight[row, col0 + j] (col0 + j < R) or grad_span_bias[row] (col0 + j == R) =
// sum over the splits, in order, of partial[s, row, j]; either output may be null (not wanted).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    fused_reduce_partials(int32_t rows, int32_t reduced, int32_t col0, int32_t columns,
                          int32_t splits, const Acc* __restrict__ partial, T* __restrict__ gS,
                          T* __restrict__ gb) {
  const int32_t elements = rows * columns;
  const int64_t stride = int64_t(rows) * columns;
  INVOLUTION_FOR_EACH_INDEX(e, elements) {
    Acc sum = Acc(0);
    for (int32_t s = 0; s < splits; ++s) sum += partial[s * stride + e];
    const int32_t row = e / columns, col = col0 + e % columns;
    if (col < reduced) {
      if (gS != nullptr) gS[int64_t(row) * reduced + col] = static_cast<T>(sum);
    } else if (gb != nullptr) {
      gb[row] = static_cast<T>(sum);
    }
  }
}

}  // namespace cuda
}  // namespace involution
