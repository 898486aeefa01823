// Self-test of the block emulation (emulate_block.h, behind csrc/ops/cuda/block_sync.cuh): three
// shared-memory kernels written as the CUDA kernels are, over random sizes and blocks of 32 to
// 256 threads, against a loop reference. A 1-D stencil that stages its weights and a tile of its
// input with halo in a grid-stride loop over tiles (as a kernel staging span weights and a tile
// of its input does), a tree reduction, and a 2-D transpose through a padded tile.
//
// The emulation must also fail where the GPU could go wrong: `--bug NAME` puts one bug into one
// kernel, and make emulate checks that each such run is reported with the tag in brackets.
//   drop-barrier           [read-write-race]    stencil: no barrier between staging and reading
//   drop-trailing-barrier  [read-write-race]    stencil: no barrier before the next tile
//                                               overwrites the one other threads still read
//   unstaged-halo          [unwritten-read]     stencil: the halo of the tile is not staged
//   racy-staging           [write-write-race]   stencil: every thread stages a weight
//   early-exit             [exit-at-barrier]    reduction: idle threads return before a barrier
//   divergent-barrier      [divergent-barrier]  transpose: threads past the last column wait at
//                                               a barrier of their own
//   unpadded-tile          [out-of-bounds]      transpose: the tile declared without its
//                                               padding column
// A uniform `if` around a barrier is the barrier removed, for the emulation as for the GPU.

// clang-format off
#include "emulate_block.h"  // before the kernels: it defines what nvcc would
// clang-format on

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../../csrc/ops/cuda/block_sync.cuh"

namespace {

using involution::cuda::block_barrier;
using involution::emulation::run_blocks;

enum class Bug {
  kNone,
  kDropBarrier,
  kDropTrailingBarrier,
  kUnstagedHalo,
  kRacyStaging,
  kEarlyExit,
  kDivergentBarrier,
  kUnpaddedTile
};
const char* const kBugNames[] = {
    "none",         "drop-barrier", "drop-trailing-barrier", "unstaged-halo",
    "racy-staging", "early-exit",   "divergent-barrier",     "unpadded-tile"};
Bug bug = Bug::kNone;

constexpr int kMaxTaps = 9;

// y[i] = sum_k w[k] * x[i + k - taps / 2] (zero outside x), one block of kBlock threads per
// tile of kBlock outputs.
template <typename T, int kBlock>
__global__ void stencil(const T* x, const T* w, int taps, int n, T* y) {
  INVOLUTION_SHARED_ARRAY(T, weights, kMaxTaps);
  INVOLUTION_SHARED_ARRAY(T, tile, kBlock + kMaxTaps - 1);
  const int t = static_cast<int>(threadIdx.x), half = taps / 2;
  if (bug == Bug::kRacyStaging) {
    weights[t % taps] = w[t % taps];
  } else if (t < taps) {
    weights[t] = w[t];
  }
  // The loop bound depends on the block only: every thread takes every barrier.
  for (int start = static_cast<int>(blockIdx.x) * kBlock; start < n;
       start += static_cast<int>(gridDim.x) * kBlock) {
    // The inputs of the tile's outputs, halo included.
    const int span = bug == Bug::kUnstagedHalo ? kBlock : kBlock + taps - 1;
    for (int j = t; j < span; j += kBlock) {
      const int i = start + j - half;
      tile[j] = i >= 0 && i < n ? x[i] : T(0);
    }
    if (bug != Bug::kDropBarrier) block_barrier();  // the weights and the tile are complete
    const int i = start + t;
    if (i < n) {  // threads past the end skip the work, not the barriers
      T acc = 0;
      for (int k = 0; k < taps; ++k) acc += weights[k] * tile[t + k];
      y[i] = acc;
    }
    // Every thread is done with the tile before the next one overwrites it.
    if (bug != Bug::kDropTrailingBarrier) block_barrier();
  }
}

// sums[b] = the sum of x[i] over the i that block b takes in a grid-stride loop.
template <typename T, int kBlock>
__global__ void block_sums(const T* x, int n, T* sums) {
  INVOLUTION_SHARED_ARRAY(T, partial, kBlock);
  const int t = static_cast<int>(threadIdx.x);
  T acc = 0;
  for (int i = static_cast<int>(blockIdx.x) * kBlock + t; i < n;
       i += static_cast<int>(gridDim.x) * kBlock) {
    acc += x[i];
  }
  partial[t] = acc;
  block_barrier();
  for (int s = kBlock / 2; s > 0; s /= 2) {
    if (bug == Bug::kEarlyExit && t >= s) return;  // idle from here on
    if (t < s) partial[t] += partial[t + s];
    block_barrier();
  }
  if (t == 0) sums[blockIdx.x] = partial[0];
}

// out (cols x rows) = the transpose of in (rows x cols): a block of kTile x 8 threads moves one
// kTile x kTile tile, reading rows of `in` and writing rows of `out` (both coalesced on the GPU).
constexpr int kTile = 32;
template <typename T>
__global__ void transpose(const T* in, int rows, int cols, T* out) {
  constexpr int kPitch = kTile + 1;  // the padding column avoids bank conflicts on the GPU
  INVOLUTION_SHARED_ARRAY(T, tile, bug == Bug::kUnpaddedTile ? kTile * kTile : kTile * kPitch);
  const int x = static_cast<int>(threadIdx.x);
  const int r0 = static_cast<int>(blockIdx.y) * kTile, c0 = static_cast<int>(blockIdx.x) * kTile;
  if (bug == Bug::kDivergentBarrier && c0 + x >= cols) {
    block_barrier();  // nothing to stage
  } else {
    for (int r = static_cast<int>(threadIdx.y); r < kTile; r += static_cast<int>(blockDim.y)) {
      if (r0 + r < rows && c0 + x < cols) tile[r * kPitch + x] = in[(r0 + r) * cols + c0 + x];
    }
    block_barrier();
  }
  for (int r = static_cast<int>(threadIdx.y); r < kTile; r += static_cast<int>(blockDim.y)) {
    if (c0 + r < cols && r0 + x < rows) out[(c0 + r) * rows + r0 + x] = tile[x * kPitch + r];
  }
}

int failures = 0;

template <typename T>
void expect_near(const char* what, T got, double want, double tol) {
  if (!(std::fabs(static_cast<double>(got) - want) <= tol)) {
    std::printf("%s: got %g, want %g\n", what, static_cast<double>(got), want);
    ++failures;
  }
}

// f(std::integral_constant<int, threads>) for a block of 32, 64, 128 or 256 threads.
template <typename F>
void with_block(int threads, const F& f) {
  switch (threads) {
    case 32:
      return f(std::integral_constant<int, 32>());
    case 64:
      return f(std::integral_constant<int, 64>());
    case 128:
      return f(std::integral_constant<int, 128>());
    default:
      return f(std::integral_constant<int, 256>());
  }
}

template <typename T>
void check_stencil(std::mt19937& rng, int threads, double tol) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::normal_distribution<double> normal;
  const int taps = 2 * pick(0, kMaxTaps / 2) + 1, n = pick(1, 5 * threads), blocks = pick(1, 3);
  std::vector<T> x(n), w(taps), y(n, T(NAN));
  for (auto& v : x) v = static_cast<T>(normal(rng));
  for (auto& v : w) v = static_cast<T>(normal(rng));
  with_block(threads, [&](auto block) {
    run_blocks("stencil", dim3(blocks), dim3(block.value),
               [&] { stencil<T, decltype(block)::value>(x.data(), w.data(), taps, n, y.data()); });
  });
  for (int i = 0; i < n; ++i) {
    double want = 0;
    for (int k = 0; k < taps; ++k) {
      const int j = i + k - taps / 2;
      if (j >= 0 && j < n) want += static_cast<double>(w[k]) * static_cast<double>(x[j]);
    }
    expect_near("stencil", y[i], want, tol);
  }
}

template <typename T>
void check_block_sums(std::mt19937& rng, int threads, double tol) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int n = pick(1, 6 * threads), blocks = pick(1, 3);
  std::vector<T> x(n), sums(blocks);
  for (auto& v : x) v = static_cast<T>(pick(-1000, 1000)) / static_cast<T>(7);
  with_block(threads, [&](auto block) {
    run_blocks("block_sums", dim3(blocks), dim3(block.value),
               [&] { block_sums<T, decltype(block)::value>(x.data(), n, sums.data()); });
  });
  for (int b = 0; b < blocks; ++b) {
    double want = 0;
    for (int i = 0; i < n; ++i) {
      if (i / threads % blocks == b) want += static_cast<double>(x[i]);
    }
    expect_near("block_sums", sums[b], want, tol);
  }
}

template <typename T>
void check_transpose(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int rows = pick(1, 3 * kTile), cols = pick(1, 3 * kTile);
  std::vector<T> in(rows * cols), out(rows * cols, T(-1));
  for (auto& v : in) v = static_cast<T>(pick(-100000, 100000));
  const dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
  run_blocks("transpose", grid, dim3(kTile, 8),
             [&] { transpose<T>(in.data(), rows, cols, out.data()); });
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) expect_near("transpose", out[c * rows + r], in[r * cols + c], 0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int cases = 40;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--bug") == 0 && i + 1 < argc) {
      const std::string name = argv[++i];
      int b = 0;
      while (b < int(std::size(kBugNames)) && name != kBugNames[b]) ++b;
      if (b == int(std::size(kBugNames))) {
        std::fprintf(stderr, "unknown bug %s\n", name.c_str());
        return 2;
      }
      bug = static_cast<Bug>(b);
    } else {
      cases = std::atoi(argv[i]);
    }
  }
  std::mt19937 rng(4321);
  int launches = 0;
  for (int i = 0; i < cases; ++i) {
    const int threads = 32 << (i % 4);
    check_stencil<double>(rng, threads, 1e-12);
    check_stencil<float>(rng, threads, 1e-4);
    check_block_sums<double>(rng, threads, 1e-9);
    check_block_sums<int64_t>(rng, threads, 0);
    check_transpose<float>(rng);
    check_transpose<int32_t>(rng);
    launches += 6;
  }
  std::printf(
      "block emulation self-test: %d launches (stencil, reduction, transpose), %d "
      "failures\n",
      launches, failures);
  if (bug != Bug::kNone) {
    std::printf("the bug %s was not reported\n", kBugNames[static_cast<int>(bug)]);
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
