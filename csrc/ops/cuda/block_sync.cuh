#pragma once
// Shared memory and barriers of the CUDA kernels, written so that the host emulation can check
// them: under nvcc these are exactly __shared__ arrays and __syncthreads(); under the emulation
// (INVOLUTION_EMULATION, tests/cpp/emulate_block.h) every access is checked against the
// barriers, so a missing __syncthreads() fails `make emulate` although the emulator runs the
// threads of a block one after another.
//
// A kernel declares its shared arrays and barriers through these names only:
//
//   INVOLUTION_SHARED_ARRAY(float, tile, kThreads);  // __shared__ float tile[kThreads];
//   tile[threadIdx.x] = x[i];
//   block_barrier();  // __syncthreads(): every thread's element is in tile
//   const float right = tile[(threadIdx.x + 1) % blockDim.x];
//   block_barrier();  // every thread has read tile before it is written again
//   tile[threadIdx.x] = 2 * right;
//
// Rules, so that the same code compiles and means the same in both builds:
//   - Declare arrays at function scope in the kernel (or a __device__ function it calls), with
//     a compile-time count and a trivially copyable element type (float, double, integers, a
//     plain struct). Several threads reaching one declaration share one array per block, as
//     on the GPU. Multi-dimensional tiles are flattened: tile[row * kPitch + column].
//   - Access elements only as name[i] (or *p, p[i] through a pointer, below). Read by using the
//     element as a value (`const float v = tile[i];`, `acc += tile[i] * w;`), write by
//     assignment or compound assignment. Under the emulation name[i] is a checked reference
//     object, so: no `auto v = tile[i];` (the object would read later than the GPU does), no
//     `float& r = tile[i]` or `&tile[i]`, no member access into a struct element (read the
//     whole element), and a function template that deduces its parameter from tile[i] sees the
//     reference type (pass `float(tile[i])`).
//   - To hand (part of) an array to a helper, pass `tile` or `tile + offset` as
//     INVOLUTION_SHARED_PTR(float) (or INVOLUTION_SHARED_PTR(const float)): float* under nvcc.
//   - No vector loads (reinterpret_cast to float4 and the like) and no atomics on shared memory:
//     the emulation does not model them.
//   - Read only elements that a thread of the block has written (arrays start as NaN or
//     garbage): guard the read, not only the use (`valid ? tile[i] : 0.f`), since the emulation
//     reports a read of an unwritten element even if its value is then dropped.
//   - Every thread of the block must reach every block_barrier(), at the same call in the
//     source (no barrier in thread-dependent control flow, no `return` of some threads before a
//     barrier others still reach): the emulation reports both.
// __shared__ and __syncthreads are not defined under the emulation, so a kernel that uses them
// directly fails to compile there instead of running unchecked.
//
// The emulated run is involution::emulation::run_blocks(name, grid, block, [&] { kernel(...); })
// (tests/cpp/emulate_block.h): it sets gridDim, blockDim, blockIdx and threadIdx as the launch
// kernel<<<grid, block>>>(...) would, and runs each block's threads from barrier to barrier; the
// kernel needs no other change. What it reports, and how: the top of that file.

#if defined(INVOLUTION_EMULATION)

#if !defined(INVOLUTION_EMULATE_BLOCK_H)
#error "the emulated build includes tests/cpp/emulate_block.h before the kernels"
#endif

// A lambda written at the declaration gives each declaration site (and each instantiation of a
// kernel template) its own array.
#define INVOLUTION_SHARED_ARRAY(type, name, count) \
  const auto name =                                \
      ::involution::emulation::shared_array<type>(#name, (count), __FILE__, __LINE__, [] {})
#define INVOLUTION_SHARED_PTR(type) ::involution::emulation::SharedPtr<type>

namespace involution {
namespace cuda {
// The call site is kept to report threads that wait at different barriers.
inline void block_barrier(std::source_location site = std::source_location::current()) {
  ::involution::emulation::barrier(site);
}
}  // namespace cuda
}  // namespace involution

#else

#define INVOLUTION_SHARED_ARRAY(type, name, count) __shared__ type name[count]
#define INVOLUTION_SHARED_PTR(type) type*

namespace involution {
namespace cuda {
__device__ __forceinline__ void block_barrier() { __syncthreads(); }
}  // namespace cuda
}  // namespace involution

#endif
