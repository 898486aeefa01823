// The CPU kernels compiled for AVX512, used when the machine has it.

#include "kernel_table.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif
#define INVOLUTION_CPU_ISA avx512
#define INVOLUTION_CPU_F16C  // float16 conversions with vcvtph2ps/vcvtps2ph
#include "row_kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace involution {
namespace cpu {

const KernelTable* kernel_table_avx512() {
  static const KernelTable table = avx512::make_table<16>();
  return &table;
}

}  // namespace cpu
}  // namespace involution

#else

namespace involution {
namespace cpu {

const KernelTable* kernel_table_avx512() { return nullptr; }

}  // namespace cpu
}  // namespace involution

#endif
