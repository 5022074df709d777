// The dense float32 matrix-vector product for decoding steps on the CPU. A decoding step reads every
// weight once for one token, so it is bound by memory bandwidth; ATen's CPU matmul (MKL sgemv)
// reads at about 6 GB/s on one thread here, while two threads streaming rows reach about twice that.
#include "format_common.hpp"

namespace qinterp::quant {

using namespace detail;

namespace {

#ifdef QINTERP_X86_AVX2
// y[k, r] = sum_c x[k, c] * w[r, c] for rows r0..r1 and NX <= 4 input rows.
template <int NX>
__attribute__((target("avx2,fma"))) void gemv_dense_rows(const float* w, int64_t r0, int64_t r1, int64_t rows,
                                                         int64_t cols, const float* x, float* y) {
  constexpr int S = NX <= 2 ? 2 : 1;  // independent sums per input row: enough FMAs in flight
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr = w + r * cols;
    __m256 s[NX][S];
    for (int k = 0; k < NX; ++k)
      for (int j = 0; j < S; ++j) s[k][j] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
      const __m256 w0 = _mm256_loadu_ps(wr + c), w1 = _mm256_loadu_ps(wr + c + 8);
      for (int k = 0; k < NX; ++k) {
        s[k][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + k * cols + c), s[k][0]);
        s[k][S - 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + k * cols + c + 8), s[k][S - 1]);
      }
    }
    float tail[NX] = {};
    for (; c < cols; ++c)
      for (int k = 0; k < NX; ++k) tail[k] += wr[c] * x[k * cols + c];
    for (int k = 0; k < NX; ++k)
      y[k * rows + r] = hsum_avx(S == 2 ? _mm256_add_ps(s[k][0], s[k][S - 1]) : s[k][0]) + tail[k];
  }
}

// The row kernel (gemv_rows' signature) for a contiguous float32 weight, holding it.
auto dense_kernel(const at::Tensor& w) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const float* wp = w.data_ptr<float>();
  return [=](int64_t r0, int64_t r1, const float* xp, int64_t nx, float* yp) {
    (void)w;  // kept alive with the kernel
    with_input_rows(nx, [&](auto n) { gemv_dense_rows<n()>(wp, r0, r1, rows, cols, xp, yp); });
  };
}
#endif

}  // namespace

at::Tensor gemv_dense(const at::Tensor& x, const at::Tensor& w) {
  if (!w.defined() || w.dim() != 2) fail("gemv_dense: the weight must be 2-D [out, in]");
  if (!x.defined() || x.dim() == 0 || x.size(-1) != w.size(1))
    fail("gemv_dense: input with ", x.defined() && x.dim() ? x.size(-1) : 0, " features does not fit the weight [",
         w.size(0), ", ", w.size(1), "]");
#ifdef QINTERP_X86_AVX2
  if (x.is_cpu() && w.is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
      w.is_contiguous() && cpu_has_fma()) {
    return gemv_rows(x, w.size(0), w.size(1), dense_kernel(w));
  }
#endif
  return at::linear(x, w);
}

namespace detail {

bool dense_row_job(const at::Tensor& x, const at::Tensor& w, RowJob* job) {
#ifdef QINTERP_X86_AVX2
  if (!w.defined() || w.dim() != 2 || !x.defined() || x.dim() == 0 || x.size(-1) != w.size(1) || !x.is_cpu() ||
      !w.is_cpu() || x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || !w.is_contiguous() ||
      !cpu_has_fma() || x.numel() / std::max<int64_t>(w.size(1), 1) > 4 ||
      (at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())))
    return false;
  *job = row_job(x, w.size(0), w.size(1), dense_kernel(w));
  return true;
#else
  return false;
#endif
}

}  // namespace detail

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (x.is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && w.dim() == 2 &&
      few_rows_no_grad(x, w.size(1)) && !(at::GradMode::is_enabled() && w.requires_grad())) {
    at::Tensor y = gemv_dense(x, w);
    return bias.defined() ? y + bias : y;
  }
  return bias.defined() ? at::linear(x, w, bias) : at::linear(x, w);
}

}  // namespace qinterp::quant
