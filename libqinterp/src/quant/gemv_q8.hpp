// Internal: decode=q8 (QuantSpec) -- decoding-step products with int8 activations, as llama.cpp
// pairs its 4-bit weights with Q8_0 activations. The input is quantized once per call in runs of
// 32 values (ref::quantize_q8), each weight run decodes to 32 int8 values (4-bit: the int8 code
// table; rtn/gptq: code - zero), and the run's dot product is exact in int32. Floats enter once
// per run (d) and once per weight block (absmax or scale). Used by format_4bit.cpp and
// format_grouped.cpp; reference.hpp's gemv_*_q8 define the results (within float32 rounding).
//
// Layout of a quantized input row: q and |q| as bytes in slot order -- in each run of 32 the even
// columns first, then the odd ones, which is the order the packed nibbles come out of a 16-byte
// load (high nibbles in the low lane, low nibbles in the high lane) -- and d per run.
#pragma once
#include <cstdint>
#include <vector>

#include "format_common.hpp"

namespace qinterp::quant::detail {

struct Q8Input {
  int64_t n = 0, cols = 0;
  std::vector<int8_t> q;   // [n, cols], slot order
  std::vector<uint8_t> a;  // |q|
  std::vector<float> d;    // [n, cols / 32]
};

// Slot of column c % 32 within its run.
inline int q8_slot(int c) { return (c & 1) * 16 + c / 2; }

#ifdef QINTERP_X86_AVX2
// ref::quantize_q8 in slot order: the same float32 operations (127 / amax, x * that, rounded half
// to even by the conversion under the default rounding mode), so the same bytes.
__attribute__((target("avx2"))) inline void q8_quantize_avx2(const float* x, int64_t n, int64_t cols, Q8Input& in) {
  in.n = n, in.cols = cols;
  in.q.resize(static_cast<size_t>(n * cols));
  in.a.resize(in.q.size());
  in.d.resize(static_cast<size_t>(n * cols / 32));
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
    // |values| <= 127: the packs do not saturate; they interleave 4-byte pieces, undone by `order`
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(e[0], e[1]), _mm256_packs_epi32(o[0], o[1])), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(in.q.data() + j * 32), bytes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(in.a.data() + j * 32), _mm256_abs_epi8(bytes));
  }
}

// y[k * rows + r] for rows r0..r1 and NX quantized input rows: sum over the row's weight blocks
// (`block` values, a multiple of 32; the last may be shorter by whole runs) of ws[block] * sum
// over its runs of d * (int8 weights . q). FOURBIT: weights are table16[code] (the 16 int8 code
// values, 127 times the codes: the sum is divided by 127 at the end); else code - zero[block] for integer zeros in [0, 15] (any other zero: that
// block in scalar code, the same sum). ws and zero point at row r0's first block; rows start on a
// byte (row_bytes apart).
template <int NX, bool FOURBIT>
__attribute__((target("avx2,fma"))) void gemv_q8_rows(const uint8_t* data, int64_t row_bytes, const float* ws,
                                                      const float* zero, int64_t nblocks, int64_t block, const int8_t* table16,
                                                      int64_t r0, int64_t r1, int64_t rows, int64_t cols,
                                                      const int8_t* q, const uint8_t* a, const float* d, float* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const __m256i shifts = _mm256_setr_epi64x(4, 4, 0, 0);  // high nibbles (even columns) in the low lane
  const __m256i table =
      FOURBIT ? _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table16)))
              : _mm256_setzero_si256();
  const int64_t runs = cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = data + r * row_bytes;
    const float* wr = ws + (r - r0) * nblocks;
    __m256 acc[NX];
    float tail[NX];
    for (int k = 0; k < NX; ++k) acc[k] = _mm256_setzero_ps(), tail[k] = 0.0f;
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t c0 = b * block, c1 = std::min(cols, c0 + block);
      __m256i zv = _mm256_setzero_si256();
      if (!FOURBIT) {
        const float ze = zero[(r - r0) * nblocks + b];
        if (!(ze == std::nearbyint(ze) && ze >= 0.0f && ze <= 15.0f)) {
          for (int k = 0; k < NX; ++k) {
            float grp = 0.0f;
            for (int64_t c = c0; c < c1; c += 32) {
              float dot = 0.0f;
              for (int i = 0; i < 32; ++i) {
                const int code = (i & 1) ? (row[(c + i) / 2] & 15) : (row[(c + i) / 2] >> 4);
                dot += (static_cast<float>(code) - ze) * q[k * cols + c + q8_slot(i)];
              }
              grp += d[k * runs + c / 32] * dot;
            }
            tail[k] += wr[b] * grp;
          }
          continue;
        }
        zv = _mm256_set1_epi8(static_cast<char>(ze));
      }
      __m256 s[NX][2];
      for (int k = 0; k < NX; ++k) s[k][0] = s[k][1] = _mm256_setzero_ps();
      int parity = 0;
      for (int64_t c = c0; c < c1; c += 32, parity ^= 1) {
        const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
        const __m256i nib = _mm256_and_si256(_mm256_srlv_epi64(raw, shifts), m4);
        const __m256i w8 = FOURBIT ? _mm256_shuffle_epi8(table, nib) : _mm256_sub_epi8(nib, zv);
        for (int k = 0; k < NX; ++k) {
          const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k * cols + c));
          const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k * cols + c));
          // |q| * (w with q's sign): maddubs' unsigned-by-signed pairs stay within 2 * 127 * 127
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(w8, qv)), ones);
          const __m256 dv = _mm256_broadcast_ss(d + k * runs + c / 32);
          if (parity)
            s[k][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dv, s[k][1]);
          else
            s[k][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dv, s[k][0]);
        }
      }
      const __m256 vs = _mm256_set1_ps(wr[b]);
      for (int k = 0; k < NX; ++k) acc[k] = _mm256_fmadd_ps(_mm256_add_ps(s[k][0], s[k][1]), vs, acc[k]);
    }
    for (int k = 0; k < NX; ++k) y[k * rows + r] = FOURBIT ? hsum_avx(acc[k]) / 127.0f : hsum_avx(acc[k]) + tail[k];
  }
}

// The decoding-step driver: x [.., cols] float32 on the CPU quantized once, then
// rows_kernel(r0, r1, q, a, d, nx, y) over the output rows on the threads, four input rows at a
// time (q, a, d, y already offset to the first of them). Returns [.., rows].
template <class Kernel>
at::Tensor gemv_q8(const at::Tensor& x, int64_t rows, int64_t cols, Kernel&& rows_kernel) {
  const at::Tensor xs = x.reshape({-1, cols}).contiguous();
  const int64_t n = xs.size(0);
  Q8Input in;
  q8_quantize_avx2(xs.data_ptr<float>(), n, cols, in);
  at::Tensor y = at::empty({n, rows}, xs.options());
  for (int64_t k0 = 0; k0 < n; k0 += 4) {
    const int64_t nx = std::min<int64_t>(4, n - k0);
    float* yp = y.data_ptr<float>() + k0 * rows;
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      rows_kernel(r0, r1, in.q.data() + k0 * cols, in.a.data() + k0 * cols, in.d.data() + k0 * (cols / 32), nx, yp);
    });
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = rows;
  return y.view(shape);
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
