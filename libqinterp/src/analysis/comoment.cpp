#include "comoment.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace qinterp::analysis::detail {

namespace {

constexpr int64_t P = kComomentPanel;  // columns of a micro-tile: two AVX registers
constexpr int64_t MR = 6;              // rows of a micro-tile: 12 accumulators + 2 B + 1 A of 16 registers
constexpr int64_t KC = 256;            // tokens per pass: a B panel (16 KB) stays in L1, the A block in L2

enum class Out { kStore, kAdd, kTile };

// C (6 × 16, row stride ldc) = or += A (kc × 6, packed) · B (kc × 16, packed).
template <Out mode>
__attribute__((target("avx2,fma"))) void micro_tile(int64_t kc, const float* a, const float* b, float* c,
                                                     int64_t ldc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b + k * P), b1 = _mm256_load_ps(b + k * P + 8);
    const float* ak = a + k * MR;
    __m256 s = _mm256_broadcast_ss(ak);
    c00 = _mm256_fmadd_ps(s, b0, c00);
    c01 = _mm256_fmadd_ps(s, b1, c01);
    s = _mm256_broadcast_ss(ak + 1);
    c10 = _mm256_fmadd_ps(s, b0, c10);
    c11 = _mm256_fmadd_ps(s, b1, c11);
    s = _mm256_broadcast_ss(ak + 2);
    c20 = _mm256_fmadd_ps(s, b0, c20);
    c21 = _mm256_fmadd_ps(s, b1, c21);
    s = _mm256_broadcast_ss(ak + 3);
    c30 = _mm256_fmadd_ps(s, b0, c30);
    c31 = _mm256_fmadd_ps(s, b1, c31);
    s = _mm256_broadcast_ss(ak + 4);
    c40 = _mm256_fmadd_ps(s, b0, c40);
    c41 = _mm256_fmadd_ps(s, b1, c41);
    s = _mm256_broadcast_ss(ak + 5);
    c50 = _mm256_fmadd_ps(s, b0, c50);
    c51 = _mm256_fmadd_ps(s, b1, c51);
  }
  const __m256 acc[2 * MR] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t h = 0; h < 2; ++h) {
      float* p = c + r * ldc + h * 8;
      if (mode == Out::kAdd)
        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[2 * r + h]));
      else
        _mm256_storeu_ps(p, acc[2 * r + h]);
    }
}

// m[j] += tile[j] (· si · sc[j]) + ai·u[j] + bi·v[j] for 16 columns in float64 (v, sc may be null;
// si · sc[j] is a power of two, so the product is exact and the sum rounds once, as without it).
__attribute__((target("avx2,fma"))) void add_row16(double* m, const float* tile, double ai, const double* u,
                                                   double bi, const double* v, double si, const double* sc) {
  const __m256d va = _mm256_set1_pd(ai), vb = _mm256_set1_pd(bi), vs = _mm256_set1_pd(si);
  for (int64_t q = 0; q < P; q += 4) {
    const __m256d t = _mm256_cvtps_pd(_mm_loadu_ps(tile + q));
    __m256d s = sc ? _mm256_fmadd_pd(t, _mm256_mul_pd(vs, _mm256_loadu_pd(sc + q)), _mm256_loadu_pd(m + q))
                   : _mm256_add_pd(_mm256_loadu_pd(m + q), t);
    s = _mm256_fmadd_pd(va, _mm256_loadu_pd(u + q), s);
    if (v) s = _mm256_fmadd_pd(vb, _mm256_loadu_pd(v + q), s);
    _mm256_storeu_pd(m + q, s);
  }
}

// dst[k][0..6) = src[k * 16 + 0..6) for k < kc; writes 2 floats past dst[kc * 6] (the A buffer
// has room for them).
__attribute__((target("avx2,fma"))) void copy6_strided(const float* src, float* dst, int64_t kc) {
  for (int64_t k = 0; k < kc; ++k) _mm256_storeu_ps(dst + k * MR, _mm256_loadu_ps(src + k * P));
}

// One full panel: out[t][l] = x[t * ldx + l] − shift[l], colsum[l] += Σ_t out[t][l] in float64,
// colmax[l] = max_t |out[t][l]|.
__attribute__((target("avx2,fma"))) void pack_panel(const float* x, int64_t nb, int64_t ldx, const float* shift,
                                                    float* out, double* colsum, float* colmax) {
  const __m256 s0 = _mm256_loadu_ps(shift), s1 = _mm256_loadu_ps(shift + 8);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 mx0 = _mm256_setzero_ps(), mx1 = mx0;
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  for (int64_t t = 0; t < nb; ++t) {
    const __m256 v0 = _mm256_sub_ps(_mm256_loadu_ps(x + t * ldx), s0);
    const __m256 v1 = _mm256_sub_ps(_mm256_loadu_ps(x + t * ldx + 8), s1);
    _mm256_store_ps(out + t * P, v0);
    _mm256_store_ps(out + t * P + 8, v1);
    mx0 = _mm256_max_ps(mx0, _mm256_andnot_ps(sign, v0));
    mx1 = _mm256_max_ps(mx1, _mm256_andnot_ps(sign, v1));
    acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(v0)));
    acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(v0, 1)));
    acc[2] = _mm256_add_pd(acc[2], _mm256_cvtps_pd(_mm256_castps256_ps128(v1)));
    acc[3] = _mm256_add_pd(acc[3], _mm256_cvtps_pd(_mm256_extractf128_ps(v1, 1)));
  }
  for (int q = 0; q < 4; ++q) _mm256_storeu_pd(colsum + 4 * q, _mm256_add_pd(_mm256_loadu_pd(colsum + 4 * q), acc[q]));
  _mm256_storeu_ps(colmax, mx0);
  _mm256_storeu_ps(colmax + 8, mx1);
}

}  // namespace

bool comoment_kernel_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

void comoment_pack(const float* x, int64_t nb, int64_t n, const float* shift, float* packed, double* colsum,
                   float* colmax, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t c0 = g * P, cn = std::min(P, n - c0);
    float* out = packed + g * nb * P;
    if (cn == P) {
      pack_panel(x + c0, nb, n, shift + c0, out, colsum + c0, colmax + c0);
      continue;
    }
    double s[P] = {};
    float mx[P] = {};
    for (int64_t t = 0; t < nb; ++t) {
      const float* row = x + t * n + c0;
      float* o = out + t * P;
      for (int64_t l = 0; l < cn; ++l) {
        o[l] = row[l] - shift[c0 + l];
        s[l] += o[l];
        mx[l] = std::max(mx[l], std::abs(o[l]));
      }
      for (int64_t l = cn; l < P; ++l) o[l] = 0.f;
    }
    for (int64_t l = 0; l < P; ++l) {
      colsum[c0 + l] += s[l];
      colmax[c0 + l] = mx[l];
    }
  }
}

RangeScales range_scales(const float* absmax, int64_t n) {
  constexpr float lo = 0x1p-40f, hi = 0x1p40f;
  RangeScales r;
  for (int64_t j = 0; j < n; ++j) {
    const float a = absmax[j];
    if (!(a <= std::numeric_limits<float>::max())) {  // inf (NaN was refused before)
      r.overflow = true;
      continue;
    }
    if (a == 0.0f || (a >= lo && a <= hi)) continue;
    if (!r.any) {
      r.scale.assign(static_cast<size_t>(n), 1.0f);
      r.unscale.assign(static_cast<size_t>(n), 1.0);
      r.any = true;
    }
    // a = m · 2^e with m in [1, 2); 2^-e must itself be a float (e ≤ 126 keeps it normal)
    const int e = std::min(std::max(std::ilogb(a), -127), 126);
    r.scale[static_cast<size_t>(j)] = std::ldexp(1.0f, -e);
    r.unscale[static_cast<size_t>(j)] = std::ldexp(1.0, e);
  }
  return r;
}

void comoment_rescale(float* packed, int64_t nb, int64_t n, const float* scale, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t c0 = g * P, cn = std::min(P, n - c0);
    float s[P];
    bool any = false;
    for (int64_t l = 0; l < P; ++l) {
      s[l] = l < cn ? scale[c0 + l] : 1.0f;
      any = any || s[l] != 1.0f;
    }
    if (!any) continue;
    float* out = packed + g * nb * P;
    for (int64_t t = 0; t < nb; ++t)
      for (int64_t l = 0; l < P; ++l) out[t * P + l] *= s[l];
  }
}

size_t comoment_scratch_floats(int64_t a0, int64_t ra, int64_t w, int64_t nb) {
  if (nb <= KC) return 0;  // one pass: straight into the float64 state
  const int64_t panels = (a0 + w + P - 1) / P - a0 / P, rows = (ra + MR - 1) / MR * MR;
  return static_cast<size_t>(panels * rows * P);
}

size_t comoment_apack_floats(int64_t ra) { return static_cast<size_t>((ra + MR - 1) / MR * MR * KC + 8); }

void comoment_row(const float* packed, int64_t nb, const ComomentRow& row, float* scratch, float* apack,
                  int64_t part, int64_t parts) {
  const int64_t a0 = row.a0, ra = row.ra, w = row.w;
  const int64_t gfirst = a0 / P, gend = (a0 + w + P - 1) / P;
  const int64_t rows = (ra + MR - 1) / MR * MR, passes = (nb + KC - 1) / KC;
  alignas(32) float tile[MR * P];
  for (int64_t p = 0; p < passes; ++p) {
    const int64_t k0 = p * KC, kc = std::min(KC, nb - k0);
    // A block: the row's neurons for these tokens, 6 at a time (past the row's end: its last neuron,
    // whose results are dropped).
    for (int64_t i0 = 0; i0 < rows; i0 += MR) {
      const int64_t first = a0 + i0;
      float* dst = apack + i0 * kc;
      if (i0 + MR <= ra && first % P <= P - 8) {  // all 6 in one line: one 8-float copy per token
        copy6_strided(packed + (first / P) * nb * P + k0 * P + first % P, dst, kc);
        continue;
      }
      for (int64_t r = 0; r < MR; ++r) {
        const int64_t nr = a0 + std::min(i0 + r, ra - 1);
        const float* src = packed + (nr / P) * nb * P + k0 * P + nr % P;
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k * P];
      }
    }
    const bool last = p + 1 == passes;
    for (int64_t g = gfirst + part; g < gend; g += parts) {
      const float* b = packed + g * nb * P + k0 * P;
      float* cpanel = scratch ? scratch + (g - gfirst) * rows * P : nullptr;
      const int64_t j0 = g * P - a0;  // the panel's first column in the row (negative: starts left of a0)
      // This part's next B panel (16 KB, for these tokens) is fetched into L2 a few lines per
      // micro-tile while this one is used: at 11,008 neurons the packed chunk (90 MB) lives in
      // DRAM, and without it each panel's first micro-tile waits for its B (+3-4% there;
      // unchanged at 1,536 neurons, where the chunk sits in L3).
      const char* nextb = g + parts < gend ? reinterpret_cast<const char*>(packed + (g + parts) * nb * P + k0 * P) : nullptr;
      const int64_t nextb_lines = kc * P * static_cast<int64_t>(sizeof(float)) / 64;
      int64_t pf = 0;
      for (int64_t i0 = 0; i0 < ra && i0 <= j0 + P - 1; i0 += MR) {  // stop below the diagonal
        const float* a = apack + i0 * kc;
        if (nextb)
          for (int q = 0; q < 8 && pf < nextb_lines; ++q, ++pf) _mm_prefetch(nextb + pf * 64, _MM_HINT_T1);
        if (!last) {
          if (p == 0)
            micro_tile<Out::kStore>(kc, a, b, cpanel + i0 * P, P);
          else
            micro_tile<Out::kAdd>(kc, a, b, cpanel + i0 * P, P);
          continue;
        }
        micro_tile<Out::kTile>(kc, a, b, tile, P);
        if (passes > 1)
          for (int64_t q = 0; q < MR * P; ++q) tile[q] += cpanel[i0 * P + q];
        for (int64_t r = 0; r < MR && i0 + r < ra; ++r) {
          const int64_t i = i0 + r;
          double* m = row.m2 + i * w;
          const double ai = row.alpha * row.u[a0 + i], bi = row.v ? row.beta * row.v[a0 + i] : 0.0;
          const double si = row.unscale ? row.unscale[a0 + i] : 1.0;
          if (j0 >= 0 && j0 + P <= w) {
            add_row16(m + j0, tile + r * P, ai, row.u + a0 + j0, bi, row.v ? row.v + a0 + j0 : nullptr, si,
                      row.unscale ? row.unscale + a0 + j0 : nullptr);
            continue;
          }
          for (int64_t l = 0; l < P; ++l) {  // a ragged panel: the row's first or last
            const int64_t j = j0 + l;
            if (j < 0 || j >= w) continue;
            const double t = static_cast<double>(tile[r * P + l]) * (row.unscale ? si * row.unscale[a0 + j] : 1.0);
            double s = m[j] + t + ai * row.u[a0 + j];
            if (row.v) s += bi * row.v[a0 + j];
            m[j] = s;
          }
        }
      }
    }
  }
}

void comoment_mirror(const ComomentRow& row) {
  for (int64_t i = 1; i < row.ra; ++i)
    for (int64_t j = 0; j < i; ++j) row.m2[i * row.w + j] = row.m2[j * row.w + i];
}

}  // namespace qinterp::analysis::detail
