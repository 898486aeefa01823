#pragma once
// How the CPU kernels are chosen and scheduled, shared by the involution ops
// (involution_kernel.cpp) and the fused ops (fused_involution_kernel.cpp): the instruction set's
// kernel table, the direct kernels for geometries whose staging buffers would be large, and the
// guided self-scheduling of tasks over torch's intra-op threads (torch::stable::parallel_for).

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "direct_kernels.h"
#include "kernel_table.h"

namespace involution {
namespace cpu {

// The instruction set ATEN_CPU_CAPABILITY asks for ("default", "avx2", "avx512"; any case), as
// torch reads it for its own kernels, or "" when it is unset or names none of these.
inline std::string requested_capability() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  std::string value = env != nullptr ? env : "";
  for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return value == "default" || value == "avx2" || value == "avx512" ? value : "";
}

// The kernels of the best instruction set that the machine (cpuid) and ATEN_CPU_CAPABILITY,
// which can lower it as it lowers torch's own kernels, allow, and that instruction set's name
// ("default", "avx2" or "avx512"). A table's getter runs code compiled for its instruction
// set: it is called only once the machine is known to have it.
struct ChosenKernels {
  const KernelTable* table;
  const char* capability;
};

inline const ChosenKernels& chosen_kernels() {
  static const ChosenKernels chosen = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const std::string requested = requested_capability();
    const bool allow_avx512 = requested.empty() || requested == "avx512";
    const bool allow_avx2 = allow_avx512 || requested == "avx2";
    if (allow_avx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      if (const KernelTable* t = kernel_table_avx512()) return ChosenKernels{t, "avx512"};
    }
    if (allow_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      if (const KernelTable* t = kernel_table_avx2()) return ChosenKernels{t, "avx2"};
    }
#endif
    return ChosenKernels{kernel_table_default(), "default"};
  }();
  return chosen;
}

inline const KernelTable& kernels() { return *chosen_kernels().table; }

// The row kernels for rows of `width` pixels: those of the chosen instruction set, except that
// rows of at most 8 pixels take AVX2's where AVX-512 was chosen. The row kernels keep a row's
// pixels in the SIMD lanes, so a 16-lane vector would be half empty (RedNet's 7x7 stage 4);
// on cores that split a 512-bit operation in two 256-bit halves (AMD Zen 4) the 8-lane
// kernels then do the same work in half the operations (measured there, 2 threads, RedNet-50's
// stage 4 at batch 8: the weight gradient 0.79x the time, the forward 0.84x).
inline const KernelTable& kernels_for_width(int64_t width) {
  const KernelTable& chosen = kernels();
  if (width <= 8 && &chosen == kernel_table_avx512()) {
    if (const KernelTable* avx2 = kernel_table_avx2()) return *avx2;
  }
  return chosen;
}

// What torch.ops.involution._cpu_capability() reports, for tests and bug reports.
inline const char* kernels_capability() { return chosen_kernels().capability; }

// Scheduling (run_guided below): a task of an involution kernel costs about
// kRowsPerTask * C/G * taps * row_width multiply-adds.
//
// The threads take tasks from a shared counter in chunks that shrink as the work runs out
// (guided self-scheduling): each grab takes 1 / (2 * threads) of the tasks left, and at least
// `grain`. The first, large chunks keep the kernel's per-call setup (its staging buffers) rare;
// the last ones, of a task or a few, let the threads finish together, where equal fixed chunks
// leave one thread idle for up to a chunk at the end. A thread that runs slower (a busy
// neighbour on a shared host, a slower core) simply takes fewer chunks. Which thread runs a task
// does not change its result.
enum class Pass { forward, backward_input, backward_weight };

// Elements the row kernels' staging buffers would take per thread (row_kernels.h: InputSlab for
// forward and backward_weight, the staged grad_output and weight rows of backward_input), for
// the widest SIMD type; in floating point, since for absurd geometries the count itself would
// not fit in an int64.
inline double staged_elements(const Geometry& g, Pass pass) {
  constexpr double kLanes = 16, kChannelBlock = 8;
  const double cpg = static_cast<double>(g.channels_per_group());
  const double KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const double sh = g.stride[1], dh = g.dilation[1];
  const double s = g.stride[2], p = g.padding[2], d = g.dilation[2];
  auto round_up_d = [&](double n) { return std::ceil(n / kLanes) * kLanes; };
  if (pass != Pass::backward_input) {
    const double phase_len = round_up_d(g.out[2]) + std::floor((KW - 1) * d / s) + 1;
    const double max_rows = (kRowsPerTask - 1) * sh + (KH - 1) * dh + 1;
    return cpg * KD * max_rows * s * phase_len + s * phase_len;
  }
  const double m_padded = round_up_d(std::ceil(g.in[2] / s));
  const double left = std::max(0.0, -std::floor((p - (KW - 1) * d) / s));
  const double len = m_padded + std::floor((s - 1 + p) / s) + left;
  const double max_out_rows = std::floor((kRowsPerTask - 1 + (KH - 1) * dh) / sh) + 1;
  const double phases = std::min<double>(s, g.in[2]);
  return cpg * KD * max_out_rows * len + KD * KH * KW * len + kChannelBlock * phases * m_padded +
         s * m_padded;
}

// Whether a pass runs the direct kernels (direct_kernels.h) instead of the row kernels: when
// the row kernels' buffers would exceed both 2^20 elements (4 MiB in float32) and 4 times the
// (batch, group) slabs of the pass's tensors, i.e. when a stride, padding or dilation far
// larger than the tensors would make the staged rows mostly zeros and gaps. Memory then stays
// bounded by a small multiple of the tensors whatever the geometry.
inline bool use_direct(const Geometry& g, Pass pass) {
  const double slabs = static_cast<double>(g.channels_per_group()) * g.in_volume() +
                       static_cast<double>(g.taps()) * g.out_volume() +
                       static_cast<double>(g.channels_per_group()) * g.out_volume();
  return staged_elements(g, pass) > std::max(double(1 << 20), 4 * slabs);
}

// The kernel of `pass` for a geometry: the row kernels for its row width (kernels_for_width:
// the input's rows for backward_input, the output's otherwise), or the direct kernels
// (use_direct).
template <typename scalar_t>
typename Kernels<scalar_t>::Fn pick_kernel(const Geometry& g, Pass pass) {
  if (use_direct(g, pass)) {
    return pass == Pass::forward          ? &direct::forward<scalar_t>
           : pass == Pass::backward_input ? &direct::backward_input<scalar_t>
                                          : &direct::backward_weight<scalar_t>;
  }
  const int64_t width = pass == Pass::backward_input ? g.in[2] : g.out[2];
  const auto& k = kernels_for_width(width).get<scalar_t>();
  return pass == Pass::forward          ? k.forward
         : pass == Pass::backward_input ? k.backward_input
                                        : k.backward_weight;
}

// Tasks per grab that amortise a kernel call's setup: about 32K multiply-adds.
inline int64_t task_grain(const Geometry& g, int64_t row_width) {
  const int64_t task_work = kRowsPerTask * g.channels_per_group() * g.taps() * row_width;
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, task_work));
}

// Whether the calling thread runs inside one of our parallel regions (parallel_for below); a
// nested region runs on the calling thread alone.
inline bool& in_parallel_region() {
  thread_local bool inside = false;
  return inside;
}

// Threads of torch's intra-op pool, read once per call (a boxed call through the stable ABI).
inline int64_t num_threads() {
  return in_parallel_region() ? 1 : static_cast<int64_t>(torch::stable::get_num_threads());
}

// Runs fn(begin, end) over [begin, end) on torch's intra-op threads, as at::parallel_for does,
// marking the threads as inside a parallel region while they run it.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& fn) {
  torch::stable::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    bool& inside = in_parallel_region();
    const bool was_inside = inside;
    inside = true;
    fn(b, e);
    inside = was_inside;
  });
}

// Threads worth using for `tasks` tasks grabbed `grain` at a time (1 inside a parallel region).
inline int64_t useful_threads(int64_t tasks, int64_t grain) {
  return std::min<int64_t>(num_threads(), ceil_div(tasks, grain));
}

// Runs fn(begin, end) over tasks [0, tasks) on `threads` threads, guided self-scheduling (see
// above); with one thread, one call.
template <typename F>
void run_guided(int64_t threads, int64_t tasks, int64_t grain, const F& fn) {
  if (threads <= 1) {  // one call, so the kernel sets up its buffers once
    fn(int64_t{0}, tasks);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    int64_t begin = next.load(std::memory_order_relaxed);
    while (begin < tasks) {
      const int64_t left = tasks - begin;
      const int64_t size = std::min(left, std::max(grain, left / (2 * threads)));
      // On failure, begin is reloaded with the counter's current value.
      if (next.compare_exchange_weak(begin, begin + size, std::memory_order_relaxed)) {
        fn(begin, begin + size);
        begin = next.load(std::memory_order_relaxed);
      }
    }
  });
}

}  // namespace cpu
}  // namespace involution
