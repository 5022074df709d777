// The LLM.int8() format (bitsandbytes' Linear8bitLt): row-wise int8 weights, and the product
// that splits off outlier columns of the input; the format's entry points for format.hpp's table.
#include "format_common.hpp"
#include "formats.hpp"

#include <cmath>
#include <vector>

namespace qinterp::quant {

using namespace detail;

Int8Rows int8_vectorwise_quant(const at::Tensor& x_in, double threshold) {
  check_float(x_in, "int8_vectorwise_quant");
  if (x_in.dim() == 0 || x_in.size(-1) == 0)
    fail("int8_vectorwise_quant: needs rows with at least one column, got ", x_in.sizes());
  at::Tensor x = x_in.dim() == 2 ? x_in : x_in.reshape({-1, x_in.size(-1)});
  Int8Rows r;
  r.outlier_cols = at::empty({0}, x.options().dtype(at::kLong));
  if (threshold > 0) {
    const at::Tensor out = x.abs().ge(threshold);
    if (out.any().item<bool>()) {
      r.outlier_cols = at::argwhere(out.any(0)).view({-1});
      x = x.masked_fill(out, 0);
    }
  }
  r.absmax = std::get<0>(x.abs().max(1)).to(at::kFloat);
  // round(x * (127 / rowmax)) in float32, half to even; an all-zero row stays zero. Python's
  // `127.0 / t` is reciprocal(t) * 127 (two roundings), and bitsandbytes writes it that way.
  const at::Tensor inv = at::where(r.absmax.gt(0), r.absmax.reciprocal() * 127.0, at::zeros_like(r.absmax));
  r.q = at::round(x * inv.unsqueeze(1)).to(at::kChar);
  if (x.size(0) > 1 && r.outlier_cols.numel()) r.q.index_fill_(1, r.outlier_cols, 0);
  return r;
}

namespace {

// int8 [n, k] x int8 [m, k]ᵀ -> int32 [n, m], exactly.
at::Tensor int_mm(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_cuda()) {
    if (a.size(0) > 16 && a.size(1) % 8 == 0 && b.size(0) % 8 == 0) return at::_int_mm(a.contiguous(), b.t());
    return at::matmul(a.to(at::kDouble), b.to(at::kDouble).t()).to(at::kInt);  // exact below 2^53
  }
  // CPU: torch's int8 GEMM is a scalar loop without AVX512-VNNI. A float32 GEMM is exact while
  // |partial sum| < 2^24, i.e. over up to 1024 columns of int8 products (1024 * 127^2 < 2^24).
  at::Tensor acc;
  const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
  for (int64_t k0 = 0; k0 < a.size(1); k0 += 1024) {
    const int64_t len = std::min<int64_t>(1024, a.size(1) - k0);
    const at::Tensor part = at::matmul(af.narrow(1, k0, len), bf.narrow(1, k0, len).t()).to(at::kInt);
    acc = acc.defined() ? acc.add_(part) : part;
  }
  return acc;
}

#ifdef QINTERP_X86_AVX2
// acc[k * rows + r] = sum_c q[k, c] * w[r, c] in int32, exactly, for rows r0..r1 and NX input rows
// (|q|, |w| <= 127: maddubs' pair sums stay below 2^15, and a row of up to 2^17 columns below 2^31).
// maddubs multiplies unsigned by signed bytes, so |q| meets w with q's sign moved onto it.
template <int NX>
__attribute__((target("avx2"))) void int8_dot_rows(const int8_t* w, int64_t r0, int64_t r1, int64_t cols,
                                                    int64_t rows, const int8_t* q, int32_t* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* wr = w + r * cols;
    __m256i s[NX];
    for (int k = 0; k < NX; ++k) s[k] = _mm256_setzero_si256();
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + c));
      for (int k = 0; k < NX; ++k) {
        const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k * cols + c));
        const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(qv), _mm256_sign_epi8(wv, qv));
        s[k] = _mm256_add_epi32(s[k], _mm256_madd_epi16(pairs, ones));
      }
    }
    for (int k = 0; k < NX; ++k) {
      __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s[k]), _mm256_extracti128_si256(s[k], 1));
      t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
      t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
      int32_t total = _mm_cvtsi128_si32(t);
      for (int64_t cc = c; cc < cols; ++cc) total += static_cast<int32_t>(q[k * cols + cc]) * wr[cc];
      acc[k * rows + r] = total;
    }
  }
}

// int8_linear for a few float32 rows on the CPU without an ATen op per step: the same row-wise
// quantization of x (outlier elements zeroed, round half to even of x * (127 / absmax) with the
// reciprocal rounded first), the exact int32 product, and the same float32 dequantization
// (acc * (absmax * scale), then * 1/127^2, then + bias). Bit-identical to the general path; the
// outlier columns' product is left to the caller (the same addmm as there).
at::Tensor int8_rows_cpu(const at::Tensor& a, const QuantizedTensor& w, const at::Tensor& bias,
                         std::vector<int64_t>& outlier_cols) {
  const int64_t n = a.size(0), cols = a.size(1), rows = w.shape[0];
  const float thr = static_cast<float>(w.spec.threshold);
  const float* x = a.data_ptr<float>();
  std::vector<uint8_t> is_out(static_cast<size_t>(cols), 0);
  if (w.spec.threshold > 0)
    for (int64_t i = 0; i < n * cols; ++i)
      if (std::fabs(x[i]) >= thr) is_out[static_cast<size_t>(i % cols)] = 1;
  for (int64_t c = 0; c < cols; ++c)
    if (is_out[static_cast<size_t>(c)]) outlier_cols.push_back(c);
  std::vector<int8_t> q(static_cast<size_t>(n * cols));
  std::vector<float> absmax(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    const float* xk = x + k * cols;
    auto kept = [&](int64_t c) { return !(w.spec.threshold > 0 && std::fabs(xk[c]) >= thr); };
    float m = 0.0f;
    for (int64_t c = 0; c < cols; ++c)
      if (kept(c)) m = std::max(m, std::fabs(xk[c]));
    absmax[static_cast<size_t>(k)] = m;
    const float inv = m > 0 ? (1.0f / m) * 127.0f : 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const bool zero = !kept(c) || (n > 1 && is_out[static_cast<size_t>(c)]);
      q[static_cast<size_t>(k * cols + c)] = zero ? 0 : static_cast<int8_t>(std::nearbyint(xk[c] * inv));
    }
  }
  std::vector<int32_t> acc(static_cast<size_t>(n * rows));
  const int8_t* wp = w.data.data_ptr<int8_t>();
  parallel_rows(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t k0 = 0; k0 < n; k0 += 4) {
      const int64_t nx = std::min<int64_t>(4, n - k0);
      const int8_t* qk = q.data() + k0 * cols;
      int32_t* ak = acc.data() + k0 * rows;
      with_input_rows(nx, [&](auto c) { int8_dot_rows<c()>(wp, r0, r1, cols, rows, qk, ak); });
    }
  });
  at::Tensor out = at::empty({n, rows}, a.options());
  float* o = out.data_ptr<float>();
  const float* sc = w.scale.data_ptr<float>();
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const float inv127sq = static_cast<float>(6.200124e-05);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t r = 0; r < rows; ++r) {
      const float rc = absmax[static_cast<size_t>(k)] * sc[r];
      float v = static_cast<float>(acc[static_cast<size_t>(k * rows + r)]) * rc;
      v = v * inv127sq;
      o[k * rows + r] = b ? v + b[r] : v;
    }
  return out;
}
#endif

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  if (w.spec.method != Method::Int8) fail("int8_linear: weight is ", w.spec.str(), ", not int8");
  check_float(x, "int8_linear");
  const int64_t in = w.shape[1], out_f = w.shape[0];
  if (x.size(-1) != in) fail("int8_linear: input has ", x.size(-1), " features, the weight takes ", in);
  const at::Tensor a = x.reshape({-1, in});
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_f;
#ifdef QINTERP_X86_AVX2
  // A decoding step or a short prompt: a few float32 rows on the CPU, weights contiguous.
  if (a.is_cpu() && w.data.is_cpu() && a.scalar_type() == at::kFloat && a.size(0) <= kFusedRowsPackedCpu &&
      w.data.is_contiguous() && w.scale.is_contiguous() &&
      (!bias.defined() || (bias.scalar_type() == at::kFloat && bias.is_contiguous())) &&
      cpu_has_avx2()) {
    const at::Tensor ac = a.contiguous();
    std::vector<int64_t> outliers;
    at::Tensor out = int8_rows_cpu(ac, w, bias, outliers);
    if (!outliers.empty()) {
      const at::Tensor cols = at::tensor(outliers, at::kLong);
      const at::Tensor sub_b = (w.data.index_select(1, cols) * w.scale.unsqueeze(1) * 7.874015718698502e-3);
      out = out.addmm(ac.index_select(1, cols), sub_b.t());
    }
    return out.view(shape);
  }
#endif
  const Int8Rows r = int8_vectorwise_quant(a, w.spec.threshold);
  at::Tensor acc = int_mm(r.q, w.data);
  // bitsandbytes' int8_mm_dequant: int32 * (row * col) * (1 / 127^2), then + bias, then cast
  at::Tensor out = acc * (r.absmax.unsqueeze(1) * w.scale.unsqueeze(0)) * 6.200124e-05;
  if (bias.defined()) out = out + bias;
  out = out.to(x.scalar_type());
  if (r.outlier_cols.numel()) {
    const at::Tensor sub_a = a.index_select(1, r.outlier_cols);
    const at::Tensor sub_b =
        (w.data.index_select(1, r.outlier_cols) * w.scale.unsqueeze(1) * 7.874015718698502e-3).to(x.scalar_type());
    // out + sub_a sub_bᵀ rounded once, as bitsandbytes' fp16 addmm on a GPU
    out = wide_addmm(out, sub_a, sub_b.t());
  }
  return out.view(shape);
}

// ---- the format's entry points (formats.hpp)

QuantizedTensor int8_quantize(const at::Tensor& x, const QuantSpec& spec) {
  if (x.dim() != 2) fail("quantize int8: needs a 2-D weight [out, in]");
  QuantizedTensor q;
  q.spec = spec;
  q.shape = {x.size(0), x.size(1)};
  q.dtype = x.scalar_type();
  // bitsandbytes quantizes the fp16 weight row-wise with no outlier split
  const Int8Rows r = int8_vectorwise_quant(x.to(at::kHalf), 0.0);
  q.data = r.q.contiguous();
  q.scale = r.absmax;
  return q;
}

at::Tensor int8_dequantize(const QuantizedTensor& q, at::ScalarType dtype) {
  return (q.data.to(at::kFloat) * q.scale.unsqueeze(1) * 7.874015718698502e-3).to(dtype);
}

void int8_check(const QuantizedTensor& q, const std::string& where) {
  if (q.shape.size() != 2) fail(where, ": int8 weight must be 2-D");
  need_part(where, q.data, "qdata", at::kChar, q.numel());
  need_part(where, q.scale, "scale", at::kFloat, q.shape[0]);
}

at::Tensor int8_format_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias) {
  at::Tensor y = int8_linear(x, w, bias);
  if (at::GradMode::is_enabled() && x.requires_grad()) {  // the int8 product's value, the gradient of the dequantized weight
    const at::Tensor lin = wide_linear(x, int8_dequantize(w, x.scalar_type()));
    y = y.detach() + (lin - lin.detach());
  }
  return y;
}

}  // namespace qinterp::quant
