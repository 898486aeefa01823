// The CPU kernels for the baseline instruction set of the build (SSE2 on x86-64).

#include "kernel_table.h"

#define INVOLUTION_CPU_ISA baseline
#include "row_kernels.h"

namespace involution {
namespace cpu {

const KernelTable* kernel_table_default() {
  static const KernelTable table = baseline::make_table<16 / sizeof(float)>();
  return &table;
}

}  // namespace cpu
}  // namespace involution
