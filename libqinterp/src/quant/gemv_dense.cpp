// The dense float32 matrix-vector product for decoding steps on the CPU. A decoding step reads every
// weight once for one token, so it is bound by memory bandwidth; ATen's CPU matmul (MKL sgemv)
// reads at about 6 GB/s on one thread here, while two threads streaming rows reach about twice that.
// Also wide_linear: fp16/bf16 products of many rows through float32 (ATen's own are slow on a CPU).
#include <atomic>
#include <cmath>

#include <torch/csrc/autograd/custom_function.h>

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

// y[k, r] for rows r0..r1 of Q8 blocks, in ref::gemv_q8_blocks' order (bit for bit the same).
template <int NX>
__attribute__((target("avx2,fma"))) void gemv_q8_blocks_rows(const int8_t* q, const float* d, int64_t r0, int64_t r1,
                                                             int64_t rows, int64_t cols, const float* x, float* y) {
  const int64_t runs = cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* qr = q + r * cols;
    const float* dr = d + r * runs;
    __m256 s[NX];
    for (int k = 0; k < NX; ++k) s[k] = _mm256_setzero_ps();
    for (int64_t j = 0; j < runs; ++j) {
      const int8_t* qj = qr + j * 32;
      __m256 w[4];
      for (int i = 0; i < 4; ++i)
        w[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qj + 8 * i))));
      const __m256 dj = _mm256_broadcast_ss(dr + j);
      for (int k = 0; k < NX; ++k) {
        const float* xj = x + k * cols + j * 32;
        __m256 t = _mm256_mul_ps(_mm256_loadu_ps(xj), w[0]);
        for (int i = 1; i < 4; ++i) t = _mm256_fmadd_ps(_mm256_loadu_ps(xj + 8 * i), w[i], t);
        s[k] = _mm256_fmadd_ps(t, dj, s[k]);
      }
    }
    for (int k = 0; k < NX; ++k) y[k * rows + r] = hsum_avx(s[k]);
  }
}
#endif

}  // namespace

Q8Blocks exact_q8_blocks(const at::Tensor& w) {
  if (!w.defined() || w.dim() != 2 || !w.is_cpu() || w.scalar_type() != at::kFloat || !w.is_contiguous() ||
      w.size(1) == 0 || w.size(1) % 32 != 0)
    return {};
  const int64_t rows = w.size(0), cols = w.size(1), runs = cols / 32;
  Q8Blocks b;
  b.q = at::empty({rows, cols}, at::kChar);
  b.d = at::empty({rows, runs}, at::kFloat);
  const float* wp = w.data_ptr<float>();
  int8_t* qp = b.q.data_ptr<int8_t>();
  float* dp = b.d.data_ptr<float>();
  std::atomic<bool> exact{true};
  at::parallel_for(0, rows * runs, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1 && exact.load(std::memory_order_relaxed); ++j) {
      const float* x = wp + j * 32;
      float m = 0.0f;
      for (int i = 0; i < 32; ++i) m = std::max(m, std::fabs(x[i]));  // a NaN fails the test below
      const float dj = m / 127.0f;
      dp[j] = dj;
      for (int i = 0; i < 32; ++i) {
        const float v = dj > 0.0f ? std::nearbyint(x[i] / dj) : 0.0f;
        if (!(std::fabs(v) <= 127.0f && dj * v == x[i])) {
          exact.store(false, std::memory_order_relaxed);
          return;
        }
        qp[j * 32 + i] = static_cast<int8_t>(v);
      }
    }
  });
  if (!exact.load()) return {};
  b.src_data = w.data_ptr();
  b.src_version = static_cast<int64_t>(w._version());
  return b;
}

at::Tensor gemv_q8_blocks(const at::Tensor& x, const Q8Blocks& w) {
  if (!w.defined() || w.q.dim() != 2 || w.q.scalar_type() != at::kChar || !w.q.is_contiguous() || w.q.size(1) % 32 ||
      !w.d.defined() || w.d.scalar_type() != at::kFloat || !w.d.is_contiguous() ||
      w.d.numel() != w.q.size(0) * (w.q.size(1) / 32))
    fail("gemv_q8_blocks: the blocks must be q [out, in] int8 and d [out, in / 32] float32, in % 32 == 0");
  const int64_t rows = w.q.size(0), cols = w.q.size(1);
  if (!x.defined() || x.dim() == 0 || x.size(-1) != cols || !x.is_cpu() || x.scalar_type() != at::kFloat)
    fail("gemv_q8_blocks: needs float32 input on the CPU with ", cols, " features");
  const int8_t* qp = w.q.data_ptr<int8_t>();
  const float* dp = w.d.data_ptr<float>();
#ifdef QINTERP_X86_AVX2
  if (cpu_has_fma())
    return gemv_rows(x, rows, cols, [&](int64_t r0, int64_t r1, const float* xp, int64_t nx, float* yp) {
      with_input_rows(nx, [&](auto n) { gemv_q8_blocks_rows<n()>(qp, dp, r0, r1, rows, cols, xp, yp); });
    });
#endif
  const at::Tensor xs = x.reshape({-1, cols}).contiguous();
  at::Tensor y = at::empty({xs.size(0), rows}, xs.options());
  ref::gemv_q8_blocks(qp, dp, rows, cols, xs.data_ptr<float>(), xs.size(0), y.data_ptr<float>());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = rows;
  return y.view(shape);
}

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
  return wide_linear(x, w);
}

namespace detail {

bool dense_row_job(StepInput& x, const at::Tensor& w, float* y, RowJob* job) {
#ifdef QINTERP_X86_AVX2
  if (!w.defined() || w.dim() != 2 || x.cols != w.size(1) || x.n < 1 || x.n > 4 || !w.is_cpu() ||
      w.scalar_type() != at::kFloat || !w.is_contiguous() || !cpu_has_fma() ||
      (at::GradMode::is_enabled() && w.requires_grad()))
    return false;
  *job = row_job(x, x.x, w.size(0), y, dense_kernel(w));
  return true;
#else
  (void)x, (void)w, (void)y, (void)job;
  return false;
#endif
}

at::Tensor wide_addmm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
  if (!widened_on_cpu(c) || a.size(0) < kWideRows) return c.addmm(a, b);
  return at::addmm(c.to(at::kFloat), a.to(at::kFloat), b.to(at::kFloat)).to(c.scalar_type());
}

}  // namespace detail

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (x.is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && w.dim() == 2 &&
      few_rows_no_grad(x, w.size(1), kFusedRowsDenseCpu) && !(at::GradMode::is_enabled() && w.requires_grad())) {
    at::Tensor y = gemv_dense(x, w);
    return bias.defined() ? y + bias : y;
  }
  return wide_linear(x, w, bias);
}

namespace {

// 4 Mi float32 weights a slice (16 MiB): an LM head's float32 copy would be hundreds of MiB.
constexpr int64_t kWideSliceElems = int64_t{1} << 22;

int64_t wide_slice(const at::Tensor& w) { return std::max<int64_t>(1, kWideSliceElems / std::max<int64_t>(1, w.size(1))); }

// x wᵀ + b in float32, rounded once to x's dtype; w widened a slice of output features at a time.
at::Tensor wide_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor bf = b.defined() ? b.to(at::kFloat) : at::Tensor();
  const int64_t out = w.size(0), slice = wide_slice(w);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  at::Tensor y = at::empty(shape, x.options());
  for (int64_t n0 = 0; n0 < out; n0 += slice) {
    const int64_t n = std::min(slice, out - n0);
    const at::Tensor ws = w.narrow(0, n0, n).to(at::kFloat);
    y.narrow(-1, n0, n).copy_(bf.defined() ? at::linear(xf, ws, bf.narrow(0, n0, n)) : at::linear(xf, ws));
  }
  return y;
}

// The gradient of wide_forward, the same way: g w summed in float32 over slices of w's rows (what
// autograd would keep otherwise is a float32 copy of every weight on the path), rounded once.
struct WideLinear : torch::autograd::Function<WideLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b) {
    ctx->save_for_backward(w.requires_grad() ? torch::autograd::variable_list{w, x} : torch::autograd::variable_list{w});
    return wide_forward(x, w, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& w = saved[0];
    const at::Tensor g = grads[0].reshape({-1, w.size(0)});
    const at::ScalarType t = w.scalar_type();
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      at::Tensor acc = at::zeros({g.size(0), w.size(1)}, g.options().dtype(at::kFloat));
      const int64_t slice = wide_slice(w);
      for (int64_t n0 = 0; n0 < w.size(0); n0 += slice) {
        const int64_t n = std::min(slice, w.size(0) - n0);
        acc.addmm_(g.narrow(1, n0, n).to(at::kFloat), w.narrow(0, n0, n).to(at::kFloat));
      }
      std::vector<int64_t> shape(grads[0].sizes().begin(), grads[0].sizes().end());
      shape.back() = w.size(1);
      gx = acc.to(t).view(shape);
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor x = saved[1].reshape({-1, w.size(1)});
      gw = at::mm(g.t().to(at::kFloat), x.to(at::kFloat)).to(t);
    }
    if (ctx->needs_input_grad(2)) gb = g.to(at::kFloat).sum(0).to(t);
    return {gx, gw, gb};
  }
};

}  // namespace

at::Tensor wide_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const at::ScalarType t = x.scalar_type();
  if (!widened_on_cpu(x) || !w.is_cpu() || w.scalar_type() != t || w.dim() != 2 || x.dim() == 0 ||
      x.size(-1) != w.size(1) || x.numel() < kWideRows * w.size(1) || (bias.defined() && bias.scalar_type() != t))
    return bias.defined() ? at::linear(x, w, bias) : at::linear(x, w);
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() ||
                                                   (bias.defined() && bias.requires_grad()));
  if (!grad) return wide_forward(x, w, bias);
  // autograd's Function takes no undefined input: a zero bias adds nothing to a float32 sum
  return WideLinear::apply(x, w, bias.defined() ? bias : at::zeros({w.size(0)}, w.options()));
}

}  // namespace qinterp::quant
