#include "involution_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "../prepare.h"
#include "kernel_table.h"

namespace involution {
namespace cpu {

namespace {

// The kernels of the best instruction set that both the machine and ATen's CPU capability
// (which ATEN_CPU_CAPABILITY=default|avx2|avx512 can lower) allow.
const KernelTable& kernels() {
  static const KernelTable* table = [] {
    const KernelTable* t = nullptr;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512" && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq")) {
      t = kernel_table_avx512();
    }
    if (t == nullptr && (capability == "AVX512" || capability == "AVX2") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      t = kernel_table_avx2();
    }
#endif
    return t != nullptr ? t : kernel_table_default();
  }();
  return *table;
}

// out = kernel(a, b) over `tasks` tasks in parallel, with the kernel that `pick` chooses from
// the table of a's dtype. a, b and out are contiguous; a task costs about
// kRowsPerTask * C/G * taps * row_width multiply-adds.
//
// The tasks are handed out in chunks, kChunksPerThread per thread, from a shared counter rather
// than as one fixed share per thread: a thread that runs slower (a busy sibling on a shared host,
// a slower core) takes fewer chunks instead of holding the others up at the end. Which thread
// runs a task does not change its result.
constexpr int64_t kChunksPerThread = 8;

template <typename Pick>
void run(const Geometry& g, int64_t tasks, int64_t row_width, const at::Tensor& a,
         const at::Tensor& b, const at::Tensor& out, const Pick& pick) {
  const int64_t task_work = kRowsPerTask * g.channels_per_group() * g.taps() * row_width;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, task_work));
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // One thread: a single chunk, so the kernel sets up its buffers once.
  const int64_t chunk =
      threads == 1 ? std::max<int64_t>(1, tasks) : std::max(grain, ceil_div(tasks, threads * kChunksPerThread));
  const int64_t chunks = ceil_div(tasks, chunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "involution_cpu", [&] {
    const auto kernel = pick(kernels().get<scalar_t>());
    const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
    const scalar_t* b_ptr = b.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    // A range of one runs inline, on the calling thread.
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min(threads, chunks), 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < chunks;
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        kernel(g, a_ptr, b_ptr, out_ptr, i * chunk, std::min(tasks, (i + 1) * chunk));
      }
    });
  });
}

}  // namespace

at::Tensor forward(const char* op, int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = detail::prepare_forward(op, dims, input, weight, stride, padding, dilation);
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out,
        [](const auto& k) { return k.forward; });
  }
  return p.out;
}

at::Tensor backward_input(const char* op, int64_t dims, const at::Tensor& grad_output,
                          const at::Tensor& weight, c10::SymIntArrayRef input_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  const auto p = detail::prepare_backward_input(op, dims, grad_output, weight, input_size, stride,
                                                padding, dilation);
  if (p.work) {
    run(p.g, input_row_tasks(p.g), p.g.in[2], p.a, p.b, p.out,
        [](const auto& k) { return k.backward_input; });
  }
  return p.out;
}

at::Tensor backward_weight(const char* op, int64_t dims, const at::Tensor& grad_output,
                           const at::Tensor& input, at::IntArrayRef kernel_size, int64_t groups,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  const auto p = detail::prepare_backward_weight(op, dims, grad_output, input, kernel_size, groups,
                                                 stride, padding, dilation);
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out,
        [](const auto& k) { return k.backward_weight; });
  }
  return p.out;
}

}  // namespace cpu
}  // namespace involution
