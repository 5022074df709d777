// Internal: what the format files (format_*.cpp) share -- argument checks, run-time CPU feature
// tests, and the driver of the fused matrix-vector products.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "qinterp/error.hpp"
#include "qinterp/quant/quantize.hpp"
#include "qinterp/quant/reference.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#define QINTERP_X86_AVX2 1  // AVX2 kernels compiled in; each use tests the CPU at run time
#endif

namespace qinterp::quant::detail {

inline ref::FourBit four(Method m) {
  if (m == Method::NF4) return ref::FourBit::NF4;
  if (m == Method::FP4) return ref::FourBit::FP4;
  fail("4-bit quantization needs nf4 or fp4");
}

inline void check_float(const at::Tensor& x, const char* what) {
  if (!x.defined()) fail(what, ": tensor is undefined");
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kHalf && t != at::kBFloat16)
    fail(what, ": needs a float32, float16 or bfloat16 tensor, got ", c10::toString(t));
}

// A weight to quantize must be finite: an inf or NaN makes its block's scale inf or NaN, and
// every code of the block then means nothing (bitsandbytes quantizes it all the same).
inline void check_finite(const at::Tensor& x, const std::string& what) {
  if (x.numel() == 0) return;
  const int64_t bad = at::isfinite(x).logical_not().sum().item<int64_t>();
  if (bad > 0)
    fail(what, ": the weight holds ", bad, " non-finite value", bad > 1 ? "s" : "",
         " (inf or NaN, after conversion to its dtype); its quantized codes and scales would mean nothing");
}

inline bool use_cuda(const at::Tensor& x) {
#ifdef QINTERP_HAVE_CUDA
  return x.is_cuda();
#else
  (void)x;
  return false;
#endif
}

inline int64_t groups_of(const QuantSpec& s, int64_t cols) { return s.group > 0 ? (cols + s.group - 1) / s.group : 1; }


// A part of a quantized weight must exist with `count` elements of `st` (QuantizedTensor::from_parts).
inline void need_part(const std::string& where, const at::Tensor& t, const char* name, at::ScalarType st,
                      int64_t count) {
  if (!t.defined()) fail(where, ": quantized weight lacks its '", name, "' part");
  if (t.scalar_type() != st || t.numel() != count)
    fail(where, ": part '", name, "' should hold ", count, " ", c10::toString(st), " values, has ", t.numel(), " ",
         c10::toString(t.scalar_type()));
}

// The input checks the fused products share: x floating point, its last dimension w's in_features.
inline void check_gemv_input(const char* fn, const at::Tensor& x, const QuantizedTensor& w) {
  if (!x.defined() || !at::isFloatingType(x.scalar_type()))
    fail(fn, ": the input must be floating point, got ", x.defined() ? c10::toString(x.scalar_type()) : "undefined");
  if (w.shape.size() != 2 || x.dim() == 0 || x.size(-1) != w.shape[1])
    fail(fn, ": input with ", x.dim() ? x.size(-1) : 0, " features does not fit the weight");
}

// How many input rows the fused products take. A decoding step has one row a sequence (kFewRows
// covers a small batch, and the CUDA kernels). On the CPU in float32 they also take a short
// prompt, four rows a pass over the weight: dequantize-then-matmul writes a float32 copy of the
// weight and MKL packs it again, which costs more than the extra passes up to about 20 rows of
// float32 weights and 40-60 rows of 4-bit ones (Qwen2.5-0.5B's prefill, docs/performance.md).
inline constexpr int64_t kFewRows = 4, kFusedRowsDenseCpu = 16, kFusedRowsPackedCpu = 32;

// Whether x [.., in] is a decoding step the fused products serve: at most max_rows rows, no gradient.
inline bool few_rows_no_grad(const at::Tensor& x, int64_t in, int64_t max_rows = kFewRows) {
  return !(at::GradMode::is_enabled() && x.requires_grad()) && x.numel() / std::max<int64_t>(in, 1) <= max_rows;
}

#ifdef QINTERP_X86_AVX2
inline bool cpu_has_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

inline bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return ok;
}

__attribute__((target("avx2"))) inline float hsum_avx(__m256 v) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
  return _mm_cvtss_f32(s4);
}


// Calls f(std::integral_constant<int, nx>{}) for nx in 1..4 (gemv_rows' input-row count), so a
// kernel can take it as a template argument and keep its accumulators in registers.
template <class F>
void with_input_rows(int64_t nx, F&& f) {
  switch (nx) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

struct Q8Input;  // gemv_q8.hpp

// A decoding step's input rows x [n, cols] (n <= 4, float32, contiguous), shared by the products
// that read them (q/k/v, gate/up): each form a kernel wants is made once, on first use -- x in the
// exact 4-bit decoder's column order (perm32), x as int8 runs for decode=q8 (q8), x and its block
// sums for the grouped 64-code kernel (nib64, one row only; state 1 made, -1 x cannot take it).
// The caller keeps x and this object alive until the jobs made from it have run.
struct StepInput {
  const float* x = nullptr;
  int64_t n = 0, cols = 0;
  std::vector<float> perm32;
  std::vector<float> nib64, nib64_sums;
  int nib64_state = 0;
  std::shared_ptr<Q8Input> q8;
};

// y = x Wᵀ for a decoding step's few rows, prepared and not yet run: run(r0, r1) writes the output
// rows [r0, r1) of y [n, rows] (the caller's buffer), and the closure holds what it reads. A
// layer's products of one input (q/k/v, gate/up) run together in one parallel region
// (run_row_jobs): one wake-up and one barrier of the threads instead of one per weight.
struct RowJob {
  int64_t rows = 0;
  std::function<void(int64_t, int64_t)> run;
};

// f(r0, r1) over the rows [0, total) on the threads: each thread takes the next chunk of rows
// when it finishes its last (about eight chunks a thread), so that a thread the machine slows down
// does less of the product instead of the others waiting for it at the region's end. Each row is
// computed as a static split would compute it: the results do not depend on who took which rows.
template <class F>
void parallel_rows(int64_t total, F&& f) {
  const int64_t nt = at::get_num_threads();
  if (nt <= 1 || total <= 32 || at::in_parallel_region()) {
    if (total > 0) f(0, total);
    return;
  }
  const int64_t chunk = std::max<int64_t>(16, ((total + nt * 8 - 1) / (nt * 8) + 15) & ~int64_t{15});
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {  // one call per thread
    for (int64_t b; (b = next.fetch_add(chunk, std::memory_order_relaxed)) < total;) f(b, std::min(total, b + chunk));
  });
}

// The jobs' rows laid end to end and split over the threads as gemv_rows splits one weight's.
// Each output row is computed as its job alone would compute it.
inline void run_row_jobs(RowJob* const* jobs, size_t n) {
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) total += jobs[i]->rows;
  parallel_rows(total, [&](int64_t b, int64_t e) {
    int64_t off = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t lo = std::max(b, off), hi = std::min(e, off + jobs[i]->rows);
      if (lo < hi) jobs[i]->run(lo - off, hi - off);
      off += jobs[i]->rows;
    }
  });
}

// y = x Wᵀ on the CPU for float32 x [.., cols] and a weight of `rows` outputs: four input rows at a
// time, the output rows split over threads; rows_kernel(r0, r1, x4, nx, y4) writes y4[k * rows + r]
// for r in [r0, r1) and k < nx <= 4. Returns [.., rows].
template <class Kernel>
at::Tensor gemv_rows(const at::Tensor& x, int64_t rows, int64_t cols, Kernel&& rows_kernel) {
  const at::Tensor xs = x.reshape({-1, cols}).contiguous();
  at::Tensor y = at::empty({xs.size(0), rows}, xs.options());
  // Each thread's rows of the weight against every input row, four at a time: one parallel region,
  // and a chunk of the weight is read from memory once for all of them.
  const int64_t n = xs.size(0);
  const float* x0 = xs.data_ptr<float>();
  float* y0 = y.data_ptr<float>();
  parallel_rows(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t k0 = 0; k0 < n; k0 += 4)
      rows_kernel(r0, r1, x0 + k0 * cols, std::min<int64_t>(4, n - k0), y0 + k0 * rows);
  });
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = rows;
  return y.view(shape);
}

// gemv_rows as a job on in.x (or on `xp`, a form of it such as perm32); the kernel is kept by value.
template <class Kernel>
RowJob row_job(const StepInput& in, const float* xp, int64_t rows, float* y, Kernel kernel) {
  RowJob j;
  j.rows = rows;
  j.run = [xp, nx = in.n, y, kernel](int64_t r0, int64_t r1) { kernel(r0, r1, xp, nx, y); };
  return j;
}
#endif

// The prepared products of a decoding step (StepInput; y [n, rows] without bias); false where the
// weight has no fused CPU kernel (the caller then goes the usual way) or does not fit x.
bool fourbit_row_job(StepInput& x, const QuantizedTensor& w, float* y, RowJob* job);
bool grouped_row_job(StepInput& x, const QuantizedTensor& w, float* y, RowJob* job);
bool dense_row_job(StepInput& x, const at::Tensor& w, float* y, RowJob* job);

// A CPU float16/bfloat16 tensor: its products of kWideRows rows or more go through float32 (wide_linear).
inline bool widened_on_cpu(const at::Tensor& t) {
  return t.is_cpu() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

// c + a b for 2-D operands of c's dtype, rounded once (as a GPU's fp16 addmm); widened as wide_linear.
at::Tensor wide_addmm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b);

}  // namespace qinterp::quant::detail
