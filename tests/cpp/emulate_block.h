#pragma once
// Host emulation of CUDA thread blocks, for the emulated builds of the kernels of
// csrc/ops/cuda/ (emulate_cuda_kernels.cpp, emulate_block_selftest.cpp): what nvcc would
// provide (__global__, threadIdx, ...), a runner that executes a grid block after block, and the
// checked shared memory and barriers behind csrc/ops/cuda/block_sync.cuh.
//
// Threads as fibers. Every CUDA thread of a block runs on its own stack (ucontext), all on the
// one host thread: the runner resumes thread 0, 1, ... in turn, each up to its next
// block_barrier() or its return, and opens the barrier (a new "epoch") only when every thread of
// the block has arrived. So a kernel may call the barrier from any depth of its code, as on the
// GPU, and the run is deterministic. One host thread per CUDA thread would give the same
// semantics but not a repeatable order, and the shadow map below would need locks.
//
// Shared memory (INVOLUTION_SHARED_ARRAY) is one array per block, filled at block start with NaN
// (floating types) or 0xA5 bytes (anything else), with a shadow record per element: the epoch
// and thread of the last write and of the reads. The kernel is reported (a message naming the
// kernel, block, thread, epoch, array and element, the thread's stack under ASan, then abort;
// the tag in brackets starts the message) when
//   [unwritten-read]     a thread reads an element that no thread of the block writes before
//                        the read or in the same epoch,
//   [read-write-race]    one thread reads and another writes an element in the same epoch: no
//                        barrier orders them, so the reader may see either value,
//   [write-write-race]   two threads write an element in the same epoch,
//   [out-of-bounds]      an index is outside the array,
//   [exit-at-barrier]    a thread returns while others wait at a barrier (on the GPU every
//                        thread of the block must reach each barrier),
//   [divergent-barrier]  the threads wait at different barriers.
// A thread reading back what it wrote itself in the same epoch is fine. The checks look at which
// threads touched an element in an epoch, not at the order the emulator ran them in: a thread
// that reads an element nobody has written yet stops there (parked) until the epoch's other
// threads have run, and the read is a race if one of them writes the element, an unwritten
// read otherwise. So a missing barrier is reported whichever thread happens to run first.
//
// Under AddressSanitizer every switch between threads is announced to it
// (__sanitizer_start_switch_fiber), so its stack and heap checks hold inside the threads, also
// after a barrier. It still prints, once, that it "doesn't fully support swapcontext".

#define INVOLUTION_EMULATE_BLOCK_H

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define INVOLUTION_EMULATION_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define INVOLUTION_EMULATION_ASAN 1
#endif
#endif
#if defined(INVOLUTION_EMULATION_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

// What nvcc would provide. __shared__ and __syncthreads are left undefined on purpose: a kernel
// that bypasses block_sync.cuh then fails to compile here instead of running unchecked.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 blockIdx, blockDim, threadIdx, gridDim;

#define INVOLUTION_EMULATION
#define INVOLUTION_EMULATION_CHECK_ALIGNED(p, bytes)                                   \
  do {                                                                                 \
    if (reinterpret_cast<uintptr_t>(p) % (bytes) != 0) {                               \
      std::fprintf(stderr, "misaligned %d-byte load at %p\n", static_cast<int>(bytes), \
                   static_cast<const void*>(p));                                       \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)

namespace involution::emulation {

struct SharedArrayBase;

// The block being run: what the reports name, the epoch, and its shared arrays.
struct BlockState {
  const char* kernel = nullptr;
  dim3 index;
  unsigned threads = 0;
  unsigned thread = 0;             // linear index of the running thread
  int32_t epoch = 0;               // barriers passed so far in this block
  std::source_location opened_by;  // the barrier that began the epoch (epoch > 0)
  // One entry per declaration site (see shared_array), made by the first thread reaching it.
  std::vector<std::pair<const void*, std::unique_ptr<SharedArrayBase>>> arrays;
};
inline BlockState* current_block = nullptr;

inline std::string thread_name(int64_t linear) {
  const int64_t x = blockDim.x, y = blockDim.y;
  return "thread (" + std::to_string(linear % x) + "," + std::to_string(linear / x % y) + "," +
         std::to_string(linear / (x * y)) + ")";
}

inline std::string site_name(const std::source_location& s) {
  return std::string(s.file_name()) + ":" + std::to_string(s.line());
}

// Prints the problem with the kernel, block, thread and epoch, and (under ASan) the stack of
// the thread, then aborts.
[[noreturn]] inline void fail(const std::string& problem) {
  std::fflush(stdout);
  std::string where = "emulation";
  if (const BlockState* b = current_block) {
    where += ": kernel " + std::string(b->kernel) + ", block (" + std::to_string(b->index.x) + "," +
             std::to_string(b->index.y) + "," + std::to_string(b->index.z) + ") of " +
             std::to_string(b->threads) + " threads, " + thread_name(b->thread) +
             ", barrier epoch " + std::to_string(b->epoch);
    if (b->epoch > 0) where += " (since the barrier at " + site_name(b->opened_by) + ")";
  }
  std::fprintf(stderr, "%s:\n  %s\n", where.c_str(), problem.c_str());
#if defined(INVOLUTION_EMULATION_ASAN)
  __sanitizer_print_stack_trace();
#endif
  std::abort();
}

inline BlockState& block(const char* what) {
  if (current_block == nullptr) {
    fail(std::string(what) + " outside a block: run the kernel with run_blocks");
  }
  return *current_block;
}

// ---- Threads as fibers ------------------------------------------------------------------------

namespace detail {

// Generous for the kernels' frames under ASan and for ASan's own report code; only the pages a
// thread touches are ever backed.
constexpr size_t kStackBytes = size_t(512) << 10;

struct Fiber {
  enum class State {
    kRunnable,
    kAtBarrier,  // waits at `barrier`
    kParked,     // read an element no thread had written: reported unless another thread
                 // writes it in the same epoch (which is reported as a race)
    kReturned,
  };
  ucontext_t context{};
  char* stack = nullptr;       // kStackBytes, above an inaccessible guard page
  void* fake_stack = nullptr;  // ASan's stack-use-after-return frames while switched out
  State state = State::kReturned;
  std::source_location barrier;
  std::string failure;  // set before resuming a thread to have it report from its own stack
};

struct Runner {
  ucontext_t scheduler{};
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  std::vector<std::unique_ptr<Fiber>> fibers;  // reused block after block
  Fiber* current = nullptr;
  void (*call)(const void*) = nullptr;  // the kernel body of the running grid
  const void* body = nullptr;

  ~Runner() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (auto& f : fibers) {
      if (f->stack != nullptr) munmap(f->stack - page, kStackBytes + page);
    }
  }
};
inline Runner runner;

// ASan must be told of every stack switch, or it takes the fiber's frames for a corrupt stack.
inline void start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if defined(INVOLUTION_EMULATION_ASAN)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}
inline void finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
#if defined(INVOLUTION_EMULATION_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
  (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}

inline void fiber_main() {
  Runner& r = runner;
  finish_switch(nullptr, &r.scheduler_stack, &r.scheduler_stack_size);
  r.call(r.body);
  r.current->state = Fiber::State::kReturned;
  start_switch(nullptr, r.scheduler_stack, r.scheduler_stack_size);  // frees its fake stack
  setcontext(&r.scheduler);
  std::abort();  // setcontext does not return
}

inline void prepare(Fiber& f) {
  if (f.stack == nullptr) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("no memory for a thread's stack");
    mprotect(p, page, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(p) + page;
  }
  if (getcontext(&f.context) != 0) fail("getcontext failed");
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiber_main, 0);
  // makecontext has put the stack pointer into the context. ASan's swapcontext interceptor
  // clears the shadow of the whole target stack when uc_stack names one, which would forget the
  // redzones of the live frames of a thread resumed after a barrier (an overflow of a local
  // array would then go unreported): without it the shadow stays as the frames left it.
  f.context.uc_stack.ss_sp = nullptr;
  f.context.uc_stack.ss_size = 0;
  f.fake_stack = nullptr;
  f.state = Fiber::State::kRunnable;
  f.failure.clear();
}

// Runs thread `linear` of the current block up to its next barrier, park or return.
inline void resume(Fiber& f, unsigned linear) {
  Runner& r = runner;
  threadIdx = dim3(linear % blockDim.x, linear / blockDim.x % blockDim.y,
                   linear / (blockDim.x * blockDim.y));
  current_block->thread = linear;
  r.current = &f;
  void* fake_stack = nullptr;
  start_switch(&fake_stack, f.stack, kStackBytes);
  swapcontext(&r.scheduler, &f.context);
  finish_switch(fake_stack, nullptr, nullptr);
  r.current = nullptr;
}

// Has thread `linear` report `problem` from its own stack (where it waits or is parked).
[[noreturn]] inline void fail_in(unsigned linear, const std::string& problem) {
  Fiber& f = *runner.fibers[linear];
  f.failure = problem;
  resume(f, linear);
  fail(problem);  // not reached: the thread aborts
}

// Switches the running thread out in `state` until the runner resumes it.
inline void park(Fiber::State state) {
  Runner& r = runner;
  Fiber& f = *r.current;
  f.state = state;
  start_switch(&f.fake_stack, r.scheduler_stack, r.scheduler_stack_size);
  swapcontext(&f.context, &r.scheduler);
  finish_switch(f.fake_stack, &r.scheduler_stack, &r.scheduler_stack_size);
  if (!f.failure.empty()) fail(f.failure);
}

}  // namespace detail

// block_barrier() under the emulation: the thread waits until every thread of the block is at
// a barrier (or the block is reported).
inline void barrier(const std::source_location& site) {
  detail::Runner& r = detail::runner;
  if (r.current == nullptr) fail("block_barrier() outside a block: run the kernel with run_blocks");
  r.current->barrier = site;
  detail::park(detail::Fiber::State::kAtBarrier);
}

// ---- Shared memory ----------------------------------------------------------------------------

struct SharedArrayBase {
  static constexpr int32_t kSeveral = -2;  // more than one thread read in read_epoch
  struct Shadow {
    int32_t write_epoch = -1;  // -1: not written in this block
    int32_t writer = -1;
    int32_t read_epoch = -1;
    int32_t reader = -1;  // a thread, or kSeveral
  };

  const char* name;
  const char* file;
  int line;
  int64_t count;
  std::vector<Shadow> shadow;

  SharedArrayBase(const char* name_, const char* file_, int line_, int64_t count_)
      : name(name_), file(file_), line(line_), count(count_), shadow(count_) {}
  virtual ~SharedArrayBase() = default;

  std::string element(int64_t i) const {
    return "shared array '" + std::string(name) + "' (" + file + ":" + std::to_string(line) + ", " +
           std::to_string(count) + " elements), element " + std::to_string(i);
  }

  void check_index(int64_t i, const char* access) const {
    if (i < 0 || i >= count) fail("[out-of-bounds] " + std::string(access) + " of " + element(i));
  }

  void on_read(int64_t i) {
    check_index(i, "read");
    const BlockState& b = block("shared memory read");
    const int32_t t = static_cast<int32_t>(b.thread);
    Shadow& s = shadow[i];
    if (s.write_epoch == b.epoch && s.writer != t) {
      fail("[read-write-race] read of " + element(i) + ", which " + thread_name(s.writer) +
           " wrote in the same barrier epoch: no barrier orders the write and the read");
    }
    if (s.read_epoch != b.epoch) {
      s.read_epoch = b.epoch;
      s.reader = t;
    } else if (s.reader != t) {
      s.reader = kSeveral;
    }
    if (s.write_epoch < 0) {
      // Nothing written yet, but a thread that runs later in this epoch may write it: that is
      // a missing barrier, reported by the write as a race. The thread stops here and reports
      // this read only if no thread writes the element before the epoch ends.
      detail::runner.current->failure =
          "[unwritten-read] read of " + element(i) +
          ", which no thread of the block writes before the read or in the same barrier epoch "
          "(the array starts as NaN or 0xA5 bytes)";
      detail::park(detail::Fiber::State::kParked);
    }
  }

  void on_write(int64_t i) {
    check_index(i, "write");
    const BlockState& b = block("shared memory write");
    const int32_t t = static_cast<int32_t>(b.thread);
    Shadow& s = shadow[i];
    if (s.read_epoch == b.epoch && s.reader != t) {
      fail("[read-write-race] write of " + element(i) + ", which " +
           (s.reader == kSeveral ? std::string("several threads") : thread_name(s.reader)) +
           " read in the same barrier epoch: no barrier orders the read and the write");
    }
    if (s.write_epoch == b.epoch && s.writer != t) {
      fail("[write-write-race] write of " + element(i) + ", which " + thread_name(s.writer) +
           " wrote in the same barrier epoch: no barrier orders the two writes");
    }
    s.write_epoch = b.epoch;
    s.writer = t;
  }
};

template <typename T>
struct SharedArray final : SharedArrayBase {
  std::vector<T> data;

  SharedArray(const char* name_, const char* file_, int line_, int64_t count_)
      : SharedArrayBase(name_, file_, line_, count_), data(count_) {
    if constexpr (std::is_floating_point_v<T>) {
      std::fill(data.begin(), data.end(), std::numeric_limits<T>::quiet_NaN());
    } else {
      std::memset(static_cast<void*>(data.data()), 0xA5, data.size() * sizeof(T));
    }
  }
};

// One element of a shared array, as the kernel's code sees it: converting it to T is a read,
// assigning to it a write (a compound assignment both). Take a value, not `auto`: the object
// reads when it is converted, so `auto v = tile[i]` would read later than the GPU does.
template <typename T>
class SharedRef {
  using Value = std::remove_const_t<T>;

 public:
  SharedRef(SharedArray<Value>* array, int64_t index) : array_(array), index_(index) {}
  SharedRef(const SharedRef&) = default;

  operator Value() const {
    array_->on_read(index_);
    return array_->data[index_];
  }

  const SharedRef& operator=(const Value& v) const
    requires(!std::is_const_v<T>)
  {
    array_->on_write(index_);
    array_->data[index_] = v;
    return *this;
  }
  // tile[i] = tile[j]: a read of j and a write of i (not a copy of the reference).
  const SharedRef& operator=(const SharedRef& other) const
    requires(!std::is_const_v<T>)
  {
    return *this = static_cast<Value>(other);
  }

#define INVOLUTION_EMULATION_COMPOUND(assign_op)        \
  template <typename U>                                 \
  const SharedRef& operator assign_op(const U& v) const \
    requires(!std::is_const_v<T>)                       \
  {                                                     \
    Value x = *this;                                    \
    x assign_op v;                                      \
    return *this = x;                                   \
  }
  INVOLUTION_EMULATION_COMPOUND(+=)
  INVOLUTION_EMULATION_COMPOUND(-=)
  INVOLUTION_EMULATION_COMPOUND(*=)
  INVOLUTION_EMULATION_COMPOUND(/=)
  INVOLUTION_EMULATION_COMPOUND(%=)
  INVOLUTION_EMULATION_COMPOUND(&=)
  INVOLUTION_EMULATION_COMPOUND(|=)
  INVOLUTION_EMULATION_COMPOUND(^=)
  INVOLUTION_EMULATION_COMPOUND(<<=)
  INVOLUTION_EMULATION_COMPOUND(>>=)
#undef INVOLUTION_EMULATION_COMPOUND

  const SharedRef& operator++() const
    requires(!std::is_const_v<T>)
  {
    return *this += 1;
  }
  const SharedRef& operator--() const
    requires(!std::is_const_v<T>)
  {
    return *this -= 1;
  }
  Value operator++(int) const
    requires(!std::is_const_v<T>)
  {
    const Value old = *this;
    *this = static_cast<Value>(old + 1);
    return old;
  }
  Value operator--(int) const
    requires(!std::is_const_v<T>)
  {
    const Value old = *this;
    *this = static_cast<Value>(old - 1);
    return old;
  }

 private:
  SharedArray<Value>* array_;
  int64_t index_;
};

// A pointer into a shared array (INVOLUTION_SHARED_PTR(T) in block_sync.cuh): indexing and
// pointer arithmetic as for T*, each access checked against the whole array.
template <typename T>
class SharedPtr {
  using Value = std::remove_const_t<T>;

 public:
  SharedPtr() = default;
  SharedPtr(SharedArray<Value>* array, int64_t offset) : array_(array), offset_(offset) {}
  operator SharedPtr<const Value>() const
    requires(!std::is_const_v<T>)
  {
    return SharedPtr<const Value>(array_, offset_);
  }

  SharedRef<T> operator[](std::ptrdiff_t i) const { return SharedRef<T>(valid(), offset_ + i); }
  SharedRef<T> operator*() const { return (*this)[0]; }
  SharedPtr operator+(std::ptrdiff_t n) const { return SharedPtr(array_, offset_ + n); }
  SharedPtr operator-(std::ptrdiff_t n) const { return SharedPtr(array_, offset_ - n); }
  friend SharedPtr operator+(std::ptrdiff_t n, const SharedPtr& p) { return p + n; }
  std::ptrdiff_t operator-(const SharedPtr& other) const {
    if (array_ != other.array_) fail("difference of pointers into different shared arrays");
    return offset_ - other.offset_;
  }
  SharedPtr& operator+=(std::ptrdiff_t n) { return *this = *this + n; }
  SharedPtr& operator-=(std::ptrdiff_t n) { return *this = *this - n; }
  SharedPtr& operator++() { return *this += 1; }
  SharedPtr& operator--() { return *this -= 1; }
  bool operator==(const SharedPtr&) const = default;

 private:
  SharedArray<Value>* valid() const {
    if (array_ == nullptr) fail("access through a null shared-memory pointer");
    return array_;
  }
  SharedArray<Value>* array_ = nullptr;
  int64_t offset_ = 0;
};

// INVOLUTION_SHARED_ARRAY(T, name, count): the block's array for this declaration site, made
// (and poisoned) by the first thread of the block that reaches it. `Site` is the type of a
// lambda written at the declaration, so each site (and each instantiation of a kernel template)
// has its own `key`.
template <typename T, typename Site>
SharedPtr<T> shared_array(const char* name, int64_t count, const char* file, int line, Site) {
  static_assert(std::is_trivially_copyable_v<T> && !std::is_const_v<T>,
                "shared memory holds plain values: no constructors, as on the GPU");
  static const char key = 0;
  BlockState& b = block("a shared array declared");
  for (auto& [k, array] : b.arrays) {
    if (k == &key) {
      if (array->count != count) fail("shared array '" + std::string(name) + "' redeclared");
      return SharedPtr<T>(static_cast<SharedArray<T>*>(array.get()), 0);
    }
  }
  if (count <= 0) fail("shared array '" + std::string(name) + "' of no elements");
  auto array = std::make_unique<SharedArray<T>>(name, file, line, count);
  SharedArray<T>* p = array.get();
  b.arrays.emplace_back(&key, std::move(array));
  return SharedPtr<T>(p, 0);
}

// ---- The runner ------------------------------------------------------------------------------

namespace detail {

inline bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         std::strcmp(a.file_name(), b.file_name()) == 0;
}

// Every thread of the current block, barrier epoch after barrier epoch.
inline void run_block(unsigned threads) {
  using State = Fiber::State;
  Runner& r = runner;
  while (r.fibers.size() < threads) r.fibers.push_back(std::make_unique<Fiber>());
  for (unsigned t = 0; t < threads; ++t) prepare(*r.fibers[t]);
  BlockState& b = *current_block;
  for (;;) {
    for (unsigned t = 0; t < threads; ++t) {
      if (r.fibers[t]->state == State::kRunnable) resume(*r.fibers[t], t);
    }
    // Every thread now waits at a barrier, is parked on an unwritten read, or has returned.
    unsigned waiting = 0, returned = 0, first_waiting = 0, first_returned = 0;
    for (unsigned t = 0; t < threads; ++t) {
      const State state = r.fibers[t]->state;
      if (state == State::kParked) fail_in(t, r.fibers[t]->failure);  // no thread wrote it
      if (state == State::kAtBarrier && waiting++ == 0) first_waiting = t;
      if (state == State::kReturned && returned++ == 0) first_returned = t;
    }
    if (waiting == 0) return;  // every thread has returned
    const std::source_location site = r.fibers[first_waiting]->barrier;
    if (returned > 0) {
      fail_in(first_waiting,
              "[exit-at-barrier] " + thread_name(first_returned) +
                  (returned > 1 ? " and " + std::to_string(returned - 1) + " other threads" : "") +
                  " returned while " + std::to_string(waiting) +
                  " threads wait at the barrier at " + site_name(site) +
                  ": every thread of the block must reach each barrier");
    }
    for (unsigned t = 0; t < threads; ++t) {
      const Fiber& f = *r.fibers[t];
      if (f.state == State::kAtBarrier && !same_site(f.barrier, site)) {
        fail_in(t, "[divergent-barrier] this thread waits at the barrier at " +
                       site_name(f.barrier) + ", " + thread_name(first_waiting) +
                       " at the one at " + site_name(site) +
                       ": the threads of a block must take the same barriers");
      }
    }
    ++b.epoch;
    b.opened_by = site;
    for (unsigned t = 0; t < threads; ++t) {
      if (r.fibers[t]->state == State::kAtBarrier) r.fibers[t]->state = State::kRunnable;
    }
  }
}

}  // namespace detail

namespace detail {

inline void run_grid(const char* kernel, dim3 grid, dim3 block, void (*call)(const void*),
                     const void* body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    fail(std::string("run_blocks: no CUDA launch has this configuration: ") + kernel);
  }
  Runner& r = runner;
  if (r.body != nullptr) fail("run_blocks inside a kernel");
  r.call = call;
  r.body = body;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        BlockState state;
        state.kernel = kernel;
        state.index = dim3(x, y, z);
        state.threads = static_cast<unsigned>(threads);
        blockIdx = state.index;
        current_block = &state;
        run_block(state.threads);
        current_block = nullptr;
      }
    }
  }
  r.call = nullptr;
  r.body = nullptr;
}

}  // namespace detail

// Runs `body` (a call of the kernel) as every thread of a grid of `grid` blocks of `block`
// threads, as kernel<<<grid, block>>> would: blocks one after another, the threads of a block as
// described at the top. Sets gridDim, blockDim, blockIdx and threadIdx; `kernel` names the
// kernel in reports.
template <typename Body>
void run_blocks(const char* kernel, dim3 grid, dim3 block, const Body& body) {
  detail::run_grid(
      kernel, grid, block, [](const void* p) { (*static_cast<const Body*>(p))(); }, &body);
}

}  // namespace involution::emulation
