// cuBLASLt's matmul API (and cuBLAS's GEMMs) on the CPU, for tests/cuda_emulator.py: the calls
// fastnet.kernels.cublaslt (and cupy_gpu.CublasGemm) make, with cuBLASLt's documented semantics (column-major layouts with a leading dimension,
// D = alpha op(A) op(B) + beta C, the BIAS / RELU_BIAS epilogues with a bias along D's rows,
// RELU_AUX_BIAS storing a ReLU bit-mask (bit i + j * AUX_LD for D[i, j]) that DRELU_BGRAD reads to
// zero D where the forward was not positive, writing D's row sums as the bias gradient, and
// BGRADA / BGRADB writing the row sums of op(A) / column sums of op(B)), and
// its checks: attribute sizes, layouts that do not fit the operation, type combinations cuBLASLt
// has no kernel for (statuses, as cuBLASLt returns them); an algorithm used with operands less
// aligned than its heuristic was told (a misaligned-address fault on a GPU: abort here).
// Where the documentation is silent the choice is named: the ReLU epilogue maps NaN to 0, as a
// max instruction would (fake_cublaslt_relu_keeps_nan(1): NaN stays); a GPU run decides.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <initializer_list>
#include <vector>

namespace {

enum { R_32F = 0, R_64F = 1, R_16F = 2, R_16BF = 14 };
enum { C_32F = 68, C_32F_FAST_TF32 = 77, C_64F = 70 };
enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15 };
constexpr uint64_t MAGIC = 0xfa57e7c0b1a5ull;
int relu_keeps_nan = 0;
// fake_cublaslt_quirk: 1 BGRADA sums op(B), 2 DRELU_BGRAD ignores the mask, 3 the mask's bits
// run from the most significant bit of each byte (RELU_AUX_BIAS and DRELU_BGRAD agree)
int quirk = 0;

struct Desc {
  int compute, scale;
  int32_t transa = 0, transb = 0;
  uint32_t epilogue = 1;
  const void* bias = nullptr;  // the bias, or the bias gradient written
  void* aux = nullptr;         // the ReLU bit-mask
  int64_t aux_ld = 0;          // its leading dimension in bits
  int32_t bias_type = -1;      // BIAS_DATA_TYPE: -1, D's type
};
enum { RELU_AUX_BIAS = 134, DRELU_BGRAD = 152, BGRADA = 256, BGRADB = 512 };
bool has_bias(uint32_t e) { return e == 4 || e == 6 || e == RELU_AUX_BIAS; }
bool writes_vector(uint32_t e) { return e == DRELU_BGRAD || e == BGRADA || e == BGRADB; }
bool uses_mask(uint32_t e) { return e == RELU_AUX_BIAS || e == DRELU_BGRAD; }
struct Layout {
  int type;
  uint64_t rows, cols;
  int64_t ld;
};
struct Preference {
  uint64_t workspace = 0;
  uint32_t align[4] = {256, 256, 256, 256};  // cuBLASLt's defaults
};
struct HeuristicResult {
  uint64_t algo[8];
  size_t workspace_size;
  int state;
  float waves_count;
  int reserved[4];
};

uint64_t alignment(const void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  return v ? (v & (~v + 1)) < 256 ? (v & (~v + 1)) : 256 : 256;
}

bool types_supported(int compute, int scale, int ab, int cd) {
  if (compute == C_64F) return scale == R_64F && ab == R_64F && cd == R_64F;
  if (compute == C_32F_FAST_TF32) return scale == R_32F && ab == R_32F && cd == R_32F;
  if (compute != C_32F || scale != R_32F) return false;
  if (ab == R_32F) return cd == R_32F;
  return (ab == R_16F || ab == R_16BF) && (cd == ab || cd == R_32F);
}

double load(const void* p, int type, size_t i) {
  switch (type) {
    case R_32F: return static_cast<const float*>(p)[i];
    case R_64F: return static_cast<const double*>(p)[i];
    case R_16F: return static_cast<float>(static_cast<const _Float16*>(p)[i]);
    default: {
      uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
  }
}

void store(void* p, int type, size_t i, double v) {
  switch (type) {
    case R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); return;
    case R_64F: static_cast<double*>(p)[i] = v; return;
    case R_16F: static_cast<_Float16*>(p)[i] = static_cast<_Float16>(static_cast<float>(v)); return;
    default: {
      float f = static_cast<float>(v);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      uint16_t bits = (u & 0x7fffffffu) > 0x7f800000u
                          ? static_cast<uint16_t>((u >> 16) | 0x40u)
                          : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      static_cast<uint16_t*>(p)[i] = bits;
    }
  }
}

float tf32_round(float x) {  // round to nearest even at 10 mantissa bits, as TF32 tensor cores

  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
  std::memcpy(&x, &u, 4);
  return x;
}

[[noreturn]] void fault(const char* what) {
  std::fprintf(stderr, "fake cuBLASLt: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

int op_shape(const Desc& d, const Layout& a, const Layout& b, const Layout& c, uint64_t* mnk) {
  uint64_t m = d.transa ? a.cols : a.rows, k = d.transa ? a.rows : a.cols;
  uint64_t kb = d.transb ? b.cols : b.rows, n = d.transb ? b.rows : b.cols;
  for (const Layout* l : {&a, &b, &c})
    if (l->ld < static_cast<int64_t>(l->rows) || l->rows == 0 || l->cols == 0) return INVALID_VALUE;
  if (k != kb || c.rows != m || c.cols != n) return INVALID_VALUE;
  mnk[0] = m, mnk[1] = n, mnk[2] = k;
  return OK;
}

}  // namespace

extern "C" {

void fake_cublaslt_relu_keeps_nan(int keep) { relu_keeps_nan = keep; }
// a library that does otherwise than fastnet reads the documentation (the probe must notice)
void fake_cublaslt_quirk(int which) { quirk = which; }

int cublasLtCreate(void** handle) {
  *handle = std::malloc(1);
  return OK;
}

int cublasLtMatmulDescCreate(void** desc, int compute, int scale) {
  *desc = new Desc{compute, scale};
  return OK;
}

int cublasLtMatmulDescSetAttribute(void* p, int attr, const void* buf, size_t size) {
  auto* d = static_cast<Desc*>(p);
  switch (attr) {
    case 3: if (size != 4) return INVALID_VALUE; std::memcpy(&d->transa, buf, 4); return OK;
    case 4: if (size != 4) return INVALID_VALUE; std::memcpy(&d->transb, buf, 4); return OK;
    case 7: if (size != 4) return INVALID_VALUE; std::memcpy(&d->epilogue, buf, 4); return OK;
    case 8: if (size != 8) return INVALID_VALUE; std::memcpy(&d->bias, buf, 8); return OK;
    case 11: if (size != 8) return INVALID_VALUE; std::memcpy(&d->aux, buf, 8); return OK;
    case 12: if (size != 8) return INVALID_VALUE; std::memcpy(&d->aux_ld, buf, 8); return OK;
    case 26: if (size != 4) return INVALID_VALUE; std::memcpy(&d->bias_type, buf, 4); return OK;
    default: return INVALID_VALUE;  // not an attribute fastnet sets: not emulated
  }
}

int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  if (type != R_32F && type != R_64F && type != R_16F && type != R_16BF) return INVALID_VALUE;
  *layout = new Layout{type, rows, cols, ld};
  return OK;
}

int cublasLtMatmulPreferenceCreate(void** pref) {
  *pref = new Preference{};
  return OK;
}

int cublasLtMatmulPreferenceSetAttribute(void* p, int attr, const void* buf, size_t size) {
  auto* pref = static_cast<Preference*>(p);
  if (attr == 1) {
    if (size != 8) return INVALID_VALUE;
    std::memcpy(&pref->workspace, buf, 8);
    return OK;
  }
  if (attr >= 5 && attr <= 8) {
    if (size != 4) return INVALID_VALUE;
    std::memcpy(&pref->align[attr - 5], buf, 4);
    return OK;
  }
  return INVALID_VALUE;
}

int cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* a, void* b, void* c, void* d,
                                   void* pref, int requested, HeuristicResult* results,
                                   int* returned) {
  if (handle == nullptr) return NOT_INITIALIZED;
  auto& dd = *static_cast<Desc*>(desc);
  auto &la = *static_cast<Layout*>(a), &lb = *static_cast<Layout*>(b);
  auto &lc = *static_cast<Layout*>(c), &ld = *static_cast<Layout*>(d);
  *returned = 0;
  uint64_t mnk[3];
  if (requested < 1) return INVALID_VALUE;
  if (la.type != lb.type || lc.type != ld.type || lc.rows != ld.rows || lc.cols != ld.cols)
    return INVALID_VALUE;
  if (int status = op_shape(dd, la, lb, ld, mnk)) return status;
  if (!types_supported(dd.compute, dd.scale, la.type, ld.type)) return NOT_SUPPORTED;
  bool bias = has_bias(dd.epilogue) || writes_vector(dd.epilogue);
  if (dd.epilogue != 1 && dd.epilogue != 2 && !bias) return NOT_SUPPORTED;
  if (bias && dd.bias == nullptr) return INVALID_VALUE;
  if (uses_mask(dd.epilogue) &&
      (dd.aux == nullptr || dd.aux_ld % 128 != 0 || dd.aux_ld < static_cast<int64_t>(ld.rows)))
    return INVALID_VALUE;
  if (dd.bias_type != -1 && dd.bias_type != ld.type &&
      !(dd.bias_type == R_32F && (ld.type == R_16F || ld.type == R_16BF)))
    return NOT_SUPPORTED;  // a bias (gradient) type other than D's: float32 for half D only
  const auto& align = static_cast<Preference*>(pref)->align;
  *returned = requested < 3 ? requested : 3;  // candidate 1 fails at launch, as some do
  for (int c = 0; c < *returned; ++c) {
    HeuristicResult& r = results[c];
    std::memset(&r, 0, sizeof r);
    r.algo[0] = MAGIC;
    for (int i = 0; i < 4; ++i) r.algo[1 + i] = align[i];  // what the algorithm may assume
    r.algo[5] = bias ? alignment(dd.bias) : 0;
    r.algo[6] = static_cast<uint64_t>(c);
    r.algo[7] = uses_mask(dd.epilogue) ? alignment(dd.aux) : 0;
    r.waves_count = 1.0f;
  }
  return OK;
}

int cublasLtMatmul(void* handle, void* desc, const void* alpha, const void* a, void* adesc,
                   const void* b, void* bdesc, const void* beta, const void* c, void* cdesc,
                   void* d, void* ddesc, const uint64_t* algo, void* workspace, size_t ws,
                   void* stream) {
  if (handle == nullptr) return NOT_INITIALIZED;
  auto& dd = *static_cast<Desc*>(desc);
  auto &la = *static_cast<Layout*>(adesc), &lb = *static_cast<Layout*>(bdesc);
  auto &lc = *static_cast<Layout*>(cdesc), &ld = *static_cast<Layout*>(ddesc);
  uint64_t mnk[3];
  if (algo == nullptr || algo[0] != MAGIC) return INVALID_VALUE;
  if (algo[6] == 1) return EXECUTION_FAILED;
  if (int status = op_shape(dd, la, lb, ld, mnk)) return status;
  if (!types_supported(dd.compute, dd.scale, la.type, ld.type)) return NOT_SUPPORTED;
  const void* pointers[4] = {a, b, c, d};
  for (int i = 0; i < 4; ++i)
    if (alignment(pointers[i]) < algo[1 + i])
      fault("an operand less aligned than its algorithm's heuristic was told (misaligned address)");
  const uint32_t e = dd.epilogue;
  bool bias = has_bias(e), relu = e == 2 || e == 6 || e == RELU_AUX_BIAS;
  if ((bias || writes_vector(e)) && (dd.bias == nullptr || alignment(dd.bias) < algo[5]))
    fault("a bias less aligned than at the heuristic, or none (misaligned address)");
  if (uses_mask(e) && (dd.aux == nullptr || alignment(dd.aux) < algo[7]))
    fault("a ReLU mask less aligned than at the heuristic, or none (misaligned address)");
  if (uses_mask(e) && (dd.aux_ld % 128 != 0 || dd.aux_ld < static_cast<int64_t>(ld.rows)))
    return INVALID_VALUE;
  auto* bits = static_cast<uint8_t*>(dd.aux);
  const int vtype = dd.bias_type == -1 ? ld.type : dd.bias_type;
  const uint32_t sums = e == BGRADA && quirk == 1 ? BGRADB : e;
  std::vector<double> grad(writes_vector(e) ? (sums == BGRADB ? mnk[1] : mnk[0]) : 0, 0.0);
  bool wide = dd.scale == R_64F, fast = dd.compute == C_32F_FAST_TF32;
  double al = wide ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  double be = wide ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  uint64_t m = mnk[0], n = mnk[1], k = mnk[2];
  // op(A) and op(B) packed column-major (TF32-rounded for FAST_TF32), then each column of D
  // accumulated over p in order: in double for 64F compute, in float otherwise
  std::vector<double> pa(m * k), pb(k * n), acc(m);
  for (uint64_t p = 0; p < k; ++p)
    for (uint64_t i = 0; i < m; ++i) {
      double x = load(a, la.type, dd.transa ? p + i * la.ld : i + p * la.ld);
      pa[i + p * m] = fast ? tf32_round(static_cast<float>(x)) : x;
    }
  for (uint64_t j = 0; j < n; ++j)
    for (uint64_t p = 0; p < k; ++p) {
      double y = load(b, lb.type, dd.transb ? j + p * lb.ld : p + j * lb.ld);
      pb[p + j * k] = fast ? tf32_round(static_cast<float>(y)) : y;
    }
  std::vector<float> pa32(pa.begin(), pa.end()), acc32(m);
  for (uint64_t j = 0; j < n; ++j) {
    if (wide) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (uint64_t p = 0; p < k; ++p) {
        const double y = pb[p + j * k], *col = &pa[p * m];
        for (uint64_t i = 0; i < m; ++i) acc[i] += col[i] * y;
      }
    } else {
      std::fill(acc32.begin(), acc32.end(), 0.0f);
      for (uint64_t p = 0; p < k; ++p) {
        const float y = static_cast<float>(pb[p + j * k]), *col = &pa32[p * m];
        for (uint64_t i = 0; i < m; ++i) acc32[i] += col[i] * y;
      }
    }
    for (uint64_t i = 0; i < m; ++i) {
      double v = al * (wide ? acc[i] : static_cast<double>(acc32[i]));
      if (be != 0.0) v += be * load(c, lc.type, i + j * lc.ld);  // beta 0: C is not read
      if (bias) v += load(dd.bias, vtype, i);
      const uint64_t bit = i + j * static_cast<uint64_t>(dd.aux_ld);
      const unsigned shift = quirk == 3 ? 7 - bit % 8 : bit % 8;
      if (e == RELU_AUX_BIAS)  // the bit: the forward was positive (NaN is not)
        bits[bit / 8] = static_cast<uint8_t>((bits[bit / 8] & ~(1u << shift)) | (v > 0.0) << shift);
      if (relu && !(v > 0.0) && (v == v || !relu_keeps_nan)) v = 0.0;
      if (e == DRELU_BGRAD && quirk != 2 && !(bits[bit / 8] >> shift & 1u)) v = 0.0;
      v = wide ? v : static_cast<double>(static_cast<float>(v));
      if (e == DRELU_BGRAD) grad[i] += v;
      store(d, ld.type, i + j * ld.ld, v);
    }
  }
  if (sums == BGRADA)  // the sums of op(A)'s rows over k (as loaded: before TF32 rounding)
    for (uint64_t p = 0; p < k; ++p)
      for (uint64_t i = 0; i < m; ++i) grad[i] += load(a, la.type, dd.transa ? p + i * la.ld : i + p * la.ld);
  if (sums == BGRADB)  // the sums of op(B)'s columns over k
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t p = 0; p < k; ++p) grad[j] += load(b, lb.type, dd.transb ? j + p * lb.ld : p + j * lb.ld);
  for (size_t i = 0; i < grad.size(); ++i)
    store(const_cast<void*>(dd.bias), vtype, i, wide ? grad[i] : static_cast<float>(grad[i]));
  (void)workspace, (void)ws, (void)stream;
  return OK;
}

}  // extern "C"

namespace {

// ---- cuBLAS (libcublas): the handle calls and GEMMs kernels/cupy_gpu.CublasGemm makes
struct Cublas {
  void* stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int math_mode = 0;  // CUBLAS_DEFAULT_MATH; 3: CUBLAS_TF32_TENSOR_OP_MATH
};

template <typename T>
int gemm(void* handle, int transa, int transb, int m, int n, int k, const T* alpha, const T* a,
         int lda, const T* b, int ldb, const T* beta, T* c, int ldc) {
  auto* h = static_cast<Cublas*>(handle);
  if (h == nullptr) return NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, transa ? k : m) ||
      ldb < std::max(1, transb ? n : k) || ldc < std::max(1, m) || transa > 1 || transb > 1)
    return INVALID_VALUE;
  if (h->workspace_bytes != 0 && h->workspace == nullptr) return INVALID_VALUE;
  bool tf32 = sizeof(T) == 4 && h->math_mode == 3;
  std::vector<T> pa(static_cast<size_t>(m) * k), acc(m);
  for (int p = 0; p < k; ++p)
    for (int i = 0; i < m; ++i) {
      T x = transa ? a[p + static_cast<size_t>(i) * lda] : a[i + static_cast<size_t>(p) * lda];
      pa[i + static_cast<size_t>(p) * m] = tf32 ? static_cast<T>(tf32_round(x)) : x;
    }
  for (int j = 0; j < n; ++j) {
    std::fill(acc.begin(), acc.end(), T(0));
    for (int p = 0; p < k; ++p) {
      T y = transb ? b[j + static_cast<size_t>(p) * ldb] : b[p + static_cast<size_t>(j) * ldb];
      if (tf32) y = static_cast<T>(tf32_round(y));
      const T* col = &pa[static_cast<size_t>(p) * m];
      for (int i = 0; i < m; ++i) acc[i] += col[i] * y;
    }
    for (int i = 0; i < m; ++i) {
      T v = *alpha * acc[i];
      if (*beta != T(0)) v += *beta * c[i + static_cast<size_t>(j) * ldc];
      c[i + static_cast<size_t>(j) * ldc] = v;
    }
  }
  return OK;
}

}  // namespace

extern "C" {

int cublasCreate_v2(void** handle) {
  *handle = new Cublas{};
  return OK;
}
int cublasSetStream_v2(void* handle, void* stream) {
  auto* h = static_cast<Cublas*>(handle);
  h->stream = stream;
  h->workspace = nullptr;  // as cuBLAS: setStream resets the workspace to its default
  h->workspace_bytes = 0;
  return OK;
}
int cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes) {
  auto* h = static_cast<Cublas*>(handle);
  h->workspace = workspace;
  h->workspace_bytes = bytes;
  return OK;
}
int cublasSetMathMode(void* handle, int mode) {
  if (mode != 0 && mode != 1 && mode != 3) return INVALID_VALUE;
  static_cast<Cublas*>(handle)->math_mode = mode;
  return OK;
}
int cublasGetMathMode(void* handle, int* mode) {
  *mode = static_cast<Cublas*>(handle)->math_mode;
  return OK;
}

int cublasSgemm_v2(void* h, int ta, int tb, int m, int n, int k, const float* alpha,
                   const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                   int ldc) {
  return gemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
int cublasDgemm_v2(void* h, int ta, int tb, int m, int n, int k, const double* alpha,
                   const double* a, int lda, const double* b, int ldb, const double* beta,
                   double* c, int ldc) {
  return gemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // extern "C"
