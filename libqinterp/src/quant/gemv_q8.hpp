// Internal: decode=q8 (QuantSpec) -- decoding-step products with int8 activations, as llama.cpp
// pairs its 4-bit weights with Q8_0 activations. The input is quantized once per call in runs of
// 32 values (ref::quantize_q8), and each run's dot product with the weight's codes is exact in
// int32. 4-bit: the codes' int8 table (signed, so |q| times the weight with q's sign, as maddubs
// wants one unsigned side). rtn/gptq: the unsigned codes straight against q, and the zero point
// once per group as zero * sum_j d_j * sum(q_j), which the quantizer keeps per run. Floats enter
// once per run (d) and once per weight block (absmax or scale). Used by format_4bit.cpp and
// format_grouped.cpp; reference.hpp's gemv_*_q8 define the results (within float32 rounding).
//
// Layout of a quantized input row: q and |q| as bytes in slot order -- in each run of 32 the even
// columns first, then the odd ones, which is the order the packed nibbles come out of a 16-byte
// load (high nibbles in the low lane, low nibbles in the high lane) -- and d and d * sum(q) per run.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "format_common.hpp"

namespace qinterp::quant::detail {

struct Q8Input {
  int64_t n = 0, cols = 0;
  std::vector<int8_t> q;   // [n, cols], slot order
  std::vector<uint8_t> a;  // |q|
  std::vector<float> d;    // [n, cols / 32]
  std::vector<float> s;    // [n, cols / 32]: d * the run's sum of q
};

#ifdef QINTERP_X86_AVX2
// ref::quantize_q8 in slot order: the same float32 operations (127 / amax, x * that, rounded half
// to even by the conversion under the default rounding mode), so the same bytes.
__attribute__((target("avx2"))) inline void q8_quantize_avx2(const float* x, int64_t n, int64_t cols, Q8Input& in) {
  in.n = n, in.cols = cols;
  in.q.resize(static_cast<size_t>(n * cols));
  in.a.resize(in.q.size());
  in.d.resize(static_cast<size_t>(n * cols / 32));
  in.s.resize(in.d.size());
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t j = 0; j < n * cols / 32; ++j) {
    const float* xj = x + j * 32;
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xj + 8 * i);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float amax = _mm_cvtss_f32(m4);
    in.d[static_cast<size_t>(j)] = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    // even columns of each 16, then odd: shuffle within lanes, then put the 64-bit pieces in order
    __m256i e[2], o[2];
    for (int h = 0; h < 2; ++h) {
      const __m256 a = v[2 * h], b = v[2 * h + 1];
      const __m256 ev = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
      const __m256 od = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
      e[h] = _mm256_cvtps_epi32(_mm256_mul_ps(ev, inv));
      o[h] = _mm256_cvtps_epi32(_mm256_mul_ps(od, inv));
    }
    const __m256i sum4 = _mm256_add_epi32(_mm256_add_epi32(e[0], e[1]), _mm256_add_epi32(o[0], o[1]));
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(sum4), _mm256_extracti128_si256(sum4, 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
    in.s[static_cast<size_t>(j)] = in.d[static_cast<size_t>(j)] * static_cast<float>(_mm_cvtsi128_si32(sum));
    // |values| <= 127: the packs do not saturate; they interleave 4-byte pieces, undone by `order`
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(e[0], e[1]), _mm256_packs_epi32(o[0], o[1])), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(in.q.data() + j * 32), bytes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(in.a.data() + j * 32), _mm256_abs_epi8(bytes));
  }
}

// One run (columns c..c+31) of a row against each input row: the int32 dot products as floats
// times the input run's d, with no dependency on earlier runs.
template <int NX, bool FOURBIT>
__attribute__((target("avx2,fma"), always_inline)) inline void q8_run(const uint8_t* row, int64_t c, __m256i table,
                                                                      const int8_t* q, const uint8_t* a, const float* d,
                                                                      int64_t runs, int64_t cols, __m256* out) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const __m256i shifts = _mm256_setr_epi64x(4, 4, 0, 0);  // high nibbles (even columns) in the low lane
  const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
  const __m256i nib = _mm256_and_si256(_mm256_srlv_epi64(raw, shifts), m4);
  const __m256i w8 = FOURBIT ? _mm256_shuffle_epi8(table, nib) : nib;
  for (int k = 0; k < NX; ++k) {
    const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k * cols + c));
    __m256i p;
    if (FOURBIT) {  // |q| * (w with q's sign): pairs within 2 * 127 * 127
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k * cols + c));
      p = _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(w8, qv)), ones);
    } else {  // unsigned codes <= 15 against q: pairs within 2 * 15 * 127
      p = _mm256_madd_epi16(_mm256_maddubs_epi16(w8, qv), ones);
    }
    out[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(d + k * runs + c / 32));
  }
}

// y[k * rows + r] for rows r0..r1 and NX quantized input rows: sum over the row's weight blocks
// (`block` values, a multiple of 32; the last may be shorter by whole runs) of ws[block] * sum
// over its runs of d * (weights . q). FOURBIT: the weights are table16[code], the 16 int8 code
// values (127 times the codes: the sum is divided by 127 at the end). Else the codes themselves,
// less zero[block] * sum over the block's runs of d * sum(q) (s). ws and zero point at row r0's
// first block; rows start on a byte (row_bytes apart).
template <int NX, bool FOURBIT>
__attribute__((target("avx2,fma"))) void gemv_q8_rows(const uint8_t* data, int64_t row_bytes, const float* ws,
                                                      const float* zero, int64_t nblocks, int64_t block,
                                                      const int8_t* table16, int64_t r0, int64_t r1, int64_t rows,
                                                      int64_t cols, const int8_t* q, const uint8_t* a, const float* d,
                                                      const float* s, float* y) {
  const __m256i table =
      FOURBIT ? _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table16)))
              : _mm256_setzero_si256();
  const int64_t runs = cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    const float* wr = ws + (r - r0) * nblocks;
    // two accumulators by block parity and runs added in pairs: short dependency chains, since
    // blocks of 64 (nf4's default) have only two runs
    __m256 acc[2][NX];
    float corr[NX];
    for (int k = 0; k < NX; ++k) acc[0][k] = acc[1][k] = _mm256_setzero_ps(), corr[k] = 0.0f;
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t c0 = b * block, c1 = std::min(cols, c0 + block);
      __m256 sb[NX], u0[NX], u1[NX];
      for (int k = 0; k < NX; ++k) sb[k] = _mm256_setzero_ps();
      int64_t c = c0;
      for (; c + 64 <= c1; c += 64) {
        q8_run<NX, FOURBIT>(row, c, table, q, a, d, runs, cols, u0);
        q8_run<NX, FOURBIT>(row, c + 32, table, q, a, d, runs, cols, u1);
        for (int k = 0; k < NX; ++k) sb[k] = _mm256_add_ps(sb[k], _mm256_add_ps(u0[k], u1[k]));
      }
      if (c < c1) {
        q8_run<NX, FOURBIT>(row, c, table, q, a, d, runs, cols, u0);
        for (int k = 0; k < NX; ++k) sb[k] = _mm256_add_ps(sb[k], u0[k]);
      }
      const __m256 vs = _mm256_set1_ps(wr[b]);
      for (int k = 0; k < NX; ++k) acc[b & 1][k] = _mm256_fmadd_ps(sb[k], vs, acc[b & 1][k]);
      if (!FOURBIT) {
        const float zs = zero[(r - r0) * nblocks + b] * wr[b];
        for (int k = 0; k < NX; ++k) {
          float t = 0.0f;
          for (int64_t j = c0 / 32; j < c1 / 32; ++j) t += s[k * runs + j];
          corr[k] += zs * t;
        }
      }
    }
    for (int k = 0; k < NX; ++k) {
      const float v = hsum_avx(_mm256_add_ps(acc[0][k], acc[1][k]));
      y[k * rows + r] = FOURBIT ? v / 127.0f : v - corr[k];
    }
  }
}

// The decoding-step driver: x [.., cols] float32 on the CPU quantized once, then
// rows_kernel(r0, r1, q, a, d, s, nx, y) over the output rows on the threads, four input rows at a
// time (q, a, d, s, y already offset to the first of them). Returns [.., rows].
template <class Kernel>
at::Tensor gemv_q8(const at::Tensor& x, int64_t rows, int64_t cols, Kernel&& rows_kernel) {
  const at::Tensor xs = x.reshape({-1, cols}).contiguous();
  const int64_t n = xs.size(0);
  Q8Input in;
  q8_quantize_avx2(xs.data_ptr<float>(), n, cols, in);
  at::Tensor y = at::empty({n, rows}, xs.options());
  float* y0 = y.data_ptr<float>();
  parallel_rows(rows, [&](int64_t r0, int64_t r1) {  // as gemv_rows: one region, every input row
    for (int64_t k0 = 0; k0 < n; k0 += 4)
      rows_kernel(r0, r1, in.q.data() + k0 * cols, in.a.data() + k0 * cols, in.d.data() + k0 * (cols / 32),
                  in.s.data() + k0 * (cols / 32), std::min<int64_t>(4, n - k0), y0 + k0 * rows);
  });
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = rows;
  return y.view(shape);
}
#endif

#ifdef QINTERP_X86_AVX2
// gemv_q8 as a job on a StepInput, whose int8 form is made on first use and shared by the jobs of
// the same input; the kernel is kept by value.
template <class Kernel>
RowJob q8_row_job(StepInput& in, int64_t rows, float* y, Kernel kernel) {
  if (!in.q8) {
    in.q8 = std::make_shared<Q8Input>();
    q8_quantize_avx2(in.x, in.n, in.cols, *in.q8);
  }
  RowJob j;
  j.rows = rows;
  j.run = [q = in.q8.get(), nx = in.n, y, kernel](int64_t r0, int64_t r1) {
    kernel(r0, r1, q->q.data(), q->a.data(), q->d.data(), q->s.data(), nx, y);
  };
  return j;
}
#endif

// Without AVX2: the reference, row by row (x [n, cols] float32 contiguous on the CPU).
template <class Ref>
at::Tensor gemv_q8_reference(const at::Tensor& x, int64_t rows, int64_t cols, Ref&& ref_row) {
  const at::Tensor xs = x.reshape({-1, cols}).contiguous();
  at::Tensor y = at::empty({xs.size(0), rows}, xs.options());
  std::vector<int8_t> q(static_cast<size_t>(cols));
  std::vector<float> d(static_cast<size_t>(cols / 32));
  for (int64_t k = 0; k < xs.size(0); ++k) {
    ref::quantize_q8(xs.data_ptr<float>() + k * cols, cols, q.data(), d.data());
    ref_row(q.data(), d.data(), y.data_ptr<float>() + k * rows);
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = rows;
  return y.view(shape);
}

}  // namespace qinterp::quant::detail
