// The CUDA C that fastnet's kernels use, for a CPU: tests/cuda_emulator.py compiles a kernel's
// own source with g++ and this header force-included, then launches it block by block. Threads
// of a block are fibers switched at barriers (when the kernel synchronizes: __syncthreads, warp
// shuffles), or one loop (when it does not). Shared memory is static (blocks run one at a time).
// What the GPU would leave undefined is reported instead: a shuffle with lanes that exited or a
// partial mask, an index past a CArray's end, a deadlock at barriers.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <csetjmp>
#include <ucontext.h>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::max;
using std::min;
using std::pow;
using std::sqrt;
using std::tanh;

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

// ---------------------------------------------------------------- reported undefined behaviour
static std::string emu_error;

static void emu_report(const std::string& what) {
  if (emu_error.empty()) emu_error = what;
}

// ---------------------------------------------------------------- half types (CuPy's classes)
class float16 {
 public:
  uint16_t bits = 0;
  float16() = default;
  float16(float f) { bits = std::bit_cast<uint16_t>(static_cast<_Float16>(f)); }
  operator float() const { return static_cast<float>(std::bit_cast<_Float16>(bits)); }
};

class bfloat16 {
 public:
  uint16_t bits = 0;
  bfloat16() = default;
  bfloat16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    } else {
      bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  operator float() const { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }
};

// ---------------------------------------------------------------- CuPy's elementwise helpers
template <typename T, int ndim, bool c_contiguous = true, bool use_32bit_indexing = false>
class CArray {
 public:
  T* data_;
  ptrdiff_t size_;
  CArray(T* data, ptrdiff_t size) : data_(data), size_(size) {}
  T& operator[](ptrdiff_t i) const {
    if (i < 0 || i >= size_) {
      emu_report("CArray index " + std::to_string(i) + " outside [0, " + std::to_string(size_) +
                 ")");
      static T sink{};
      return sink;
    }
    return data_[i];
  }
  ptrdiff_t size() const { return size_; }
};

template <int ndim, bool use_32bit_indexing = false>
class CIndexer {
 public:
  ptrdiff_t size_, index_ = 0;
  explicit CIndexer(ptrdiff_t size) : size_(size) {}
  void set(ptrdiff_t i) { index_ = i; }
  ptrdiff_t get() const { return index_; }
  ptrdiff_t size() const { return size_; }
};

template <typename EmuArray>
struct emu_elem;
template <typename EmuT, int emu_n, bool emu_c, bool emu_b>
struct emu_elem<CArray<EmuT, emu_n, emu_c, emu_b>> {
  using type = EmuT;
};
template <typename EmuArray>
using emu_elem_t = typename emu_elem<EmuArray>::type;

#define CUPY_FOR(i, n)                                                                   \
  for (ptrdiff_t i = static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x)

// ---------------------------------------------------------------- atomics
template <typename V>
V atomicAdd(V* address, V value) {  // one OS thread runs every CUDA thread: atomic as it is
  V old = *address;
  *address = old + value;
  return old;
}

// ---------------------------------------------------------------- blocks, barriers, warps
// The threads of a block are fibers on one OS thread, switched only where CUDA threads would
// wait for each other: __syncthreads (every live thread of the block) and warp shuffles (every
// live lane of the warp). A thread that returns leaves both, as on the GPU. When no thread can
// go on and some wait, that is a deadlock on the GPU: reported, not waited for.
enum EmuState { EMU_RUNNABLE, EMU_AT_BLOCK, EMU_AT_WARP, EMU_DONE };

struct EmuFiber {
  ucontext_t context;  // the first entry (a fresh stack); later switches are _setjmp/_longjmp
  jmp_buf resume;
  bool started = false;
  std::vector<char> stack;
  uint3 index;
  EmuState state = EMU_RUNNABLE;
};

static jmp_buf emu_scheduler_resume;
static std::vector<EmuFiber> emu_fibers;
static EmuFiber* emu_current = nullptr;
static int emu_current_id = 0;
static const std::function<void()>* emu_kernel = nullptr;
static uint64_t emu_slots[32 * 32];  // a value per lane of each warp, for shuffles

static void emu_wait(EmuState state) {
  if (emu_current == nullptr) {
    emu_report("a barrier or warp shuffle in a kernel run without fibers");
    return;
  }
  emu_current->state = state;
  if (_setjmp(emu_current->resume) == 0) _longjmp(emu_scheduler_resume, 1);
}

inline void __syncthreads() { emu_wait(EMU_AT_BLOCK); }

template <typename V>
V emu_shuffle(unsigned int mask, V value, int source) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "shuffled values are at most 8 bytes");
  int lane = emu_current_id % 32, first = emu_current_id - lane;
  int lanes = std::min<int>(32, static_cast<int>(emu_fibers.size()) - first);
  unsigned int full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  if (mask != full) emu_report("a warp shuffle whose mask is not every lane of the warp");
  std::memcpy(&emu_slots[emu_current_id], &value, sizeof(V));
  emu_wait(EMU_AT_WARP);  // every live lane has written its value
  V result = value;
  if (source >= 0 && source < lanes) {
    if (emu_fibers[first + source].state == EMU_DONE)
      emu_report("a warp shuffle reads a lane that has exited");
    std::memcpy(&result, &emu_slots[first + source], sizeof(V));
  }
  emu_wait(EMU_AT_WARP);  // every live lane has read
  return result;
}

template <typename V>
V __shfl_xor_sync(unsigned int mask, V value, int lane_mask) {
  return emu_shuffle(mask, value, (emu_current_id % 32) ^ lane_mask);
}

template <typename V>
V __shfl_down_sync(unsigned int mask, V value, unsigned int delta) {
  int source = emu_current_id % 32 + static_cast<int>(delta);
  return emu_shuffle(mask, value, source < 32 ? source : emu_current_id % 32);
}

static void emu_fiber_main() {
  (*emu_kernel)();
  emu_current->state = EMU_DONE;
  _longjmp(emu_scheduler_resume, 1);
}

static uint3 emu_thread_index(unsigned int t) {
  return uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

// Releases the threads waiting at a barrier every live thread of its group has reached.
static bool emu_release() {
  int n = static_cast<int>(emu_fibers.size()), live = 0, at_block = 0;
  bool released = false;
  for (auto& f : emu_fibers) {
    live += f.state != EMU_DONE;
    at_block += f.state == EMU_AT_BLOCK;
  }
  if (live > 0 && at_block == live) {
    for (auto& f : emu_fibers)
      if (f.state == EMU_AT_BLOCK) f.state = EMU_RUNNABLE;
    return true;
  }
  for (int w = 0; w < n; w += 32) {
    int warp_live = 0, warp_at = 0;
    for (int t = w; t < std::min(n, w + 32); ++t) {
      warp_live += emu_fibers[t].state != EMU_DONE;
      warp_at += emu_fibers[t].state == EMU_AT_WARP;
    }
    if (warp_live > 0 && warp_at == warp_live) {
      for (int t = w; t < std::min(n, w + 32); ++t)
        if (emu_fibers[t].state == EMU_AT_WARP) emu_fibers[t].state = EMU_RUNNABLE;
      released = true;
    }
  }
  return released;
}

static void emu_run_block(unsigned int threads) {
  const size_t stack_bytes = 256 * 1024;
  emu_fibers.resize(threads);
  for (unsigned int t = 0; t < threads; ++t) {
    EmuFiber& f = emu_fibers[t];
    f.stack.resize(stack_bytes);
    f.index = emu_thread_index(t);
    f.state = EMU_RUNNABLE;
    f.started = false;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = nullptr;  // the fiber ends with a jump back to the scheduler
    makecontext(&f.context, emu_fiber_main, 0);
  }
  for (;;) {
    bool ran = false;
    for (unsigned int t = 0; t < threads; ++t) {
      if (emu_fibers[t].state != EMU_RUNNABLE) continue;
      emu_current = &emu_fibers[t];
      emu_current_id = static_cast<int>(t);
      threadIdx = emu_current->index;
      if (_setjmp(emu_scheduler_resume) == 0) {
        if (emu_current->started) _longjmp(emu_current->resume, 1);
        emu_current->started = true;
        setcontext(&emu_current->context);
      }
      ran = true;
    }
    emu_current = nullptr;
    bool done = true;
    for (auto& f : emu_fibers) done = done && f.state == EMU_DONE;
    if (done) return;
    if (!emu_release() && !ran) {
      emu_report("deadlock: threads wait at barriers that the block's other threads never reach");
      return;
    }
  }
}

// Runs `kernel` over the grid, block after block; returns the first undefined behaviour seen
// ("" if none). Kernels without barriers run their threads one after the other.
static std::string emu_run(const unsigned int* grid, const unsigned int* block, bool fibers,
                           const std::function<void()>& kernel) {
  gridDim = dim3{grid[0], grid[1], grid[2]};
  blockDim = dim3{block[0], block[1], block[2]};
  emu_error.clear();
  emu_kernel = &kernel;
  unsigned int threads = block[0] * block[1] * block[2];
  for (unsigned int bz = 0; bz < grid[2] && emu_error.empty(); ++bz)
    for (unsigned int by = 0; by < grid[1] && emu_error.empty(); ++by)
      for (unsigned int bx = 0; bx < grid[0] && emu_error.empty(); ++bx) {
        blockIdx = uint3{bx, by, bz};
        if (fibers) {
          emu_run_block(threads);
          continue;
        }
        for (unsigned int t = 0; t < threads; ++t) {
          threadIdx = emu_thread_index(t);
          kernel();
        }
      }
  return emu_error;
}

// The numpy dtype name of a parameter's (pointee) type, for the launcher's argument checks.
template <typename V>
constexpr const char* emu_dtype() {
  using U = std::remove_cv_t<V>;
  if constexpr (std::is_same_v<U, float>) return "float32";
  else if constexpr (std::is_same_v<U, double>) return "float64";
  else if constexpr (std::is_same_v<U, float16>) return "float16";
  else if constexpr (std::is_same_v<U, bfloat16>) return "bfloat16";
  else if constexpr (std::is_same_v<U, bool>) return "bool";
  else if constexpr (std::is_integral_v<U>)
    return std::is_signed_v<U> ? (sizeof(U) == 8 ? "int64" : sizeof(U) == 4 ? "int32" : "int16")
                               : (sizeof(U) == 8 ? "uint64" : sizeof(U) == 4 ? "uint32" : "uint16");
  else return "unknown";
}
