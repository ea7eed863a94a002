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
#include <map>
#include <math.h>  // float overloads of every math function, as CUDA's
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
#define __shared__ static __attribute__((section("emu_shared")))  // filled with 0xFF per block
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));
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
  bfloat16(float f) {  // round to nearest even
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = 0x7fffu;  // CUDA's __float2bfloat16: the canonical NaN
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
// Addresses an atomic wrote in this launch: the element's size and kind ('f' or 'i'), how many
// adds and the sum of their magnitudes (the race check compares floating sums within the error
// bound of summing them in another order: the order of atomic adds is free on a GPU).
struct EmuAtomic {
  int size;
  char kind;
  double adds, magnitude;
};
static std::map<uintptr_t, EmuAtomic> emu_atomics;

template <typename V>
V atomicAdd(V* address, V value) {  // one OS thread runs every CUDA thread: atomic as it is
  EmuAtomic& a = emu_atomics[reinterpret_cast<uintptr_t>(address)];
  a.size = static_cast<int>(sizeof(V));
  a.kind = std::is_floating_point_v<V> ? 'f' : 'i';
  a.adds += 1;
  a.magnitude += std::fabs(static_cast<double>(*address)) + std::fabs(static_cast<double>(value));
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
  int line = 0;  // the __syncthreads it waits at
};

static jmp_buf emu_scheduler_resume;
static std::vector<EmuFiber> emu_fibers;
static EmuFiber* emu_current = nullptr;
static int emu_current_id = 0;
static const std::function<void()>* emu_kernel = nullptr;
static uint64_t emu_slots[32 * 32];  // a value per lane of each warp, for shuffles
static bool emu_reversed = false;     // schedule threads and blocks last to first (race check)

static void emu_wait(EmuState state) {
  if (emu_current == nullptr) {
    emu_report("a barrier or warp shuffle in a kernel run without fibers");
    return;
  }
  emu_current->state = state;
  if (_setjmp(emu_current->resume) == 0) _longjmp(emu_scheduler_resume, 1);
}

inline void emu_syncthreads(int line) {
  if (emu_current != nullptr) emu_current->line = line;
  emu_wait(EMU_AT_BLOCK);
}
#define __syncthreads() emu_syncthreads(__LINE__)

template <typename V>
V emu_shuffle(unsigned int mask, V value, int source) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "shuffled values are at most 8 bytes");
  int lane = emu_current_id % 32, first = emu_current_id - lane;
  int lanes = std::min<int>(32, static_cast<int>(emu_fibers.size()) - first);
  unsigned int full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  if (mask != full) emu_report("a warp shuffle whose mask is not every lane of the warp");
  for (int t = first; t < first + lanes; ++t)
    if (emu_fibers[t].state == EMU_DONE)
      emu_report("a full-mask warp shuffle after lanes of the warp returned (undefined)");
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
    int line = -1;
    for (auto& f : emu_fibers) {
      if (f.state != EMU_AT_BLOCK) continue;
      if (line >= 0 && f.line != line)
        emu_report("threads of a block wait at different __syncthreads (lines " +
                   std::to_string(line) + " and " + std::to_string(f.line) + ")");
      line = f.line;
      f.state = EMU_RUNNABLE;
    }
    if (live < n) emu_report("a __syncthreads after some threads of the block returned");
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
    for (unsigned int u = 0; u < threads; ++u) {
      unsigned int t = emu_reversed ? threads - 1 - u : u;
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

struct EmuBuffer {
  unsigned char* data;
  size_t bytes;
};

static bool emu_is_atomic(uintptr_t byte) {
  auto it = emu_atomics.upper_bound(byte);
  if (it == emu_atomics.begin()) return false;
  --it;
  return byte < it->first + static_cast<uintptr_t>(it->second.size);
}

// One pass over the grid (in `emu_reversed` order). With `owners`, a byte that two blocks both
// change, outside the atomics' addresses, is reported: blocks run concurrently on a GPU.
static void emu_pass(const unsigned int* grid, unsigned int threads, bool fibers,
                     const std::vector<EmuBuffer>& buffers, std::vector<std::vector<int>>* owners) {
  const unsigned int count = grid[0] * grid[1] * grid[2];
  std::vector<std::vector<unsigned char>> before(buffers.size());
  for (unsigned int u = 0; u < count && emu_error.empty(); ++u) {
    unsigned int b = emu_reversed ? count - 1 - u : u;
    blockIdx = uint3{b % grid[0], (b / grid[0]) % grid[1], b / (grid[0] * grid[1])};
    if (__start_emu_shared != nullptr)  // shared memory starts as garbage, as on a GPU
      std::memset(__start_emu_shared, 0xFF, __stop_emu_shared - __start_emu_shared);
    if (owners != nullptr)
      for (size_t k = 0; k < buffers.size(); ++k)
        before[k].assign(buffers[k].data, buffers[k].data + buffers[k].bytes);
    if (fibers) {
      emu_run_block(threads);
    } else {
      for (unsigned int t = 0; t < threads; ++t) {
        threadIdx = emu_thread_index(emu_reversed ? threads - 1 - t : t);
        (*emu_kernel)();
      }
    }
    if (owners == nullptr) continue;
    for (size_t k = 0; k < buffers.size(); ++k)
      for (size_t i = 0; i < buffers[k].bytes; ++i) {
        if (buffers[k].data[i] == before[k][i]) continue;
        int& owner = (*owners)[k][i];
        if (owner >= 0 && owner != static_cast<int>(b) &&
            !emu_is_atomic(reinterpret_cast<uintptr_t>(buffers[k].data + i))) {
          emu_report("blocks " + std::to_string(owner) + " and " + std::to_string(b) +
                     " both wrote byte " + std::to_string(i) + " of argument " +
                     std::to_string(k) + " without an atomic (a race on a GPU)");
          return;
        }
        owner = static_cast<int>(b);
      }
  }
}

static bool emu_exact = false;  // a kernel whose float atomics must not depend on the order

static bool emu_close(const unsigned char* a, const unsigned char* b, const EmuAtomic& atomic) {
  int size = atomic.size;
  if (atomic.kind == 'i' || emu_exact) return std::memcmp(a, b, size) == 0;
  double x, y;
  if (size == 4) {
    float fx, fy;
    std::memcpy(&fx, a, 4), std::memcpy(&fy, b, 4);
    x = fx, y = fy;
  } else {
    std::memcpy(&x, a, 8), std::memcpy(&y, b, 8);
  }
  double eps = size == 4 ? 0x1p-24 : 0x1p-53;  // (n - 1) eps sum|x|: summation's error bound
  double tolerance = 2.0 * atomic.adds * eps * atomic.magnitude;
  return x == y || std::fabs(x - y) <= tolerance || (x != x && y != y);
}

// Runs `kernel` over the grid; returns the first undefined behaviour seen ("" if none). Where the
// arguments are small enough (`check_bytes`: their bytes times the blocks, 0 for no checks), the
// grid runs twice, blocks and threads last to first and then first to last, from the same
// memory: results that differ (atomics within a tolerance) depend on the order, a race on a
// GPU; and no two blocks may write one byte except through atomics. Kernels without barriers
// run their threads one after the other.
static std::string emu_run(const unsigned int* grid, const unsigned int* block, bool fibers,
                           const std::function<void()>& kernel, std::vector<EmuBuffer> buffers,
                           long long check_bytes) {
  gridDim = dim3{grid[0], grid[1], grid[2]};
  blockDim = dim3{block[0], block[1], block[2]};
  emu_error.clear();
  emu_exact = check_bytes < 0;  // (negative: the same bits in any order, atomics too)
  check_bytes = emu_exact ? -check_bytes : check_bytes;
  emu_atomics.clear();
  emu_kernel = &kernel;
  const unsigned int threads = block[0] * block[1] * block[2];
  const unsigned int count = grid[0] * grid[1] * grid[2];
  size_t total = 0;
  for (auto& b : buffers) total += b.bytes;
  bool check = static_cast<long long>(total) * count <= check_bytes;
  if (!check) {
    emu_reversed = false;
    emu_pass(grid, threads, fibers, buffers, nullptr);
    return emu_error;
  }
  std::vector<std::vector<unsigned char>> start(buffers.size()), reversed(buffers.size());
  for (size_t k = 0; k < buffers.size(); ++k)
    start[k].assign(buffers[k].data, buffers[k].data + buffers[k].bytes);
  emu_reversed = true;
  emu_pass(grid, threads, fibers, buffers, nullptr);
  for (size_t k = 0; k < buffers.size(); ++k)  // all read before any is restored: they may alias
    reversed[k].assign(buffers[k].data, buffers[k].data + buffers[k].bytes);
  for (size_t k = 0; k < buffers.size(); ++k)
    std::memcpy(buffers[k].data, start[k].data(), buffers[k].bytes);
  emu_reversed = false;
  std::vector<std::vector<int>> owners(buffers.size());
  for (size_t k = 0; k < buffers.size(); ++k) owners[k].assign(buffers[k].bytes, -1);
  emu_pass(grid, threads, fibers, buffers, &owners);
  for (size_t k = 0; k < buffers.size() && emu_error.empty(); ++k) {
    for (size_t i = 0; i < buffers[k].bytes; ++i) {
      if (buffers[k].data[i] == reversed[k][i]) continue;
      auto at = reinterpret_cast<uintptr_t>(buffers[k].data + i);
      auto it = emu_atomics.upper_bound(at);
      if (it != emu_atomics.begin()) {
        --it;
        size_t offset = i - (at - it->first);
        int size = it->second.size;
        if (at < it->first + size && offset + size <= buffers[k].bytes &&
            emu_close(buffers[k].data + offset, reversed[k].data() + offset, it->second))
          continue;
      }
      emu_report("argument " + std::to_string(k) + " differs at byte " + std::to_string(i) +
                 " when blocks and threads run in another order (a race on a GPU: a missing "
                 "__syncthreads or atomic)");
      break;
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
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>)
    return sizeof(U) == 8 ? "int64" : sizeof(U) == 4 ? "int32" : sizeof(U) == 2 ? "int16" : "int8";
  else if constexpr (std::is_integral_v<U>)
    return sizeof(U) == 8 ? "uint64" : sizeof(U) == 4 ? "uint32" : sizeof(U) == 2 ? "uint16" : "uint8";
  else return "unknown";
}
