#include "qinterp/quant/gguf_blocks.hpp"

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QINTERP_GGUF_AVX2 1  // compiled in; used only where the CPU has AVX2 (checked at run time)
#endif

#include "qinterp/error.hpp"

namespace qinterp::quant {

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

void q8_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 34, y += 32) {
    const float d = half_to_float(rd16(b));
    const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) y[j] = q[j] * d;
  }
}

void q4_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 18, y += 32) {
    const float d = half_to_float(rd16(b));
    const uint8_t* q = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = ((q[j] & 0x0f) - 8) * d;
      y[j + 16] = ((q[j] >> 4) - 8) * d;
    }
  }
}

void q4_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 20, y += 32) {
    const float d = half_to_float(rd16(b)), m = half_to_float(rd16(b + 2));
    const uint8_t* q = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = (q[j] & 0x0f) * d + m;
      y[j + 16] = (q[j] >> 4) * d + m;
    }
  }
}

// Q5_0 / Q5_1: 32 values from 16 bytes of low nibbles and 32 high bits (qh, little-endian):
// element j < 16 takes qs[j] & 15 and bit j, element j + 16 takes qs[j] >> 4 and bit j + 16.
// Q5_0 centres the 5-bit code on 16 (x = d (q - 16)); Q5_1 adds a minimum (x = d q + m).
template <bool kMin>
void q5(const uint8_t* b, float* y, int64_t nb) {
  constexpr int kBytes = kMin ? 24 : 22;
  for (int64_t i = 0; i < nb; ++i, b += kBytes, y += 32) {
    const float d = half_to_float(rd16(b)), m = kMin ? half_to_float(rd16(b + 2)) : 0.0f;
    uint32_t qh;
    std::memcpy(&qh, b + (kMin ? 4 : 2), 4);
    const uint8_t* q = b + (kMin ? 8 : 6);
    for (int j = 0; j < 16; ++j) {
      const int lo = (q[j] & 0x0f) | (((qh >> j) & 1) << 4), hi = (q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      if (kMin) {
        y[j] = lo * d + m;
        y[j + 16] = hi * d + m;
      } else {
        y[j] = (lo - 16) * d;
        y[j + 16] = (hi - 16) * d;
      }
    }
  }
}

// The 12 scale bytes of a Q4_K super-block pack eight 6-bit scales and eight 6-bit mins.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void q4_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 144) {
    const float d = half_to_float(rd16(b)), dmin = half_to_float(rd16(b + 2));
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
  }
}

// Q2_K: scales[16] (low nibble: scale, high nibble: min, one pair per 16 elements), qs[64], fp16
// d, fp16 dmin. Element e = 128 h + 32 s + l takes bits 2s..2s+1 of qs[32 h + l];
// x = d (sc & 15) q - dmin (sc >> 4).
void q2_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 84, y += 256) {
    const uint8_t* sc = b;
    const uint8_t* qs = b + 16;
    const float d = half_to_float(rd16(b + 80)), dmin = half_to_float(rd16(b + 82));
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, s = (e / 32) % 4, l = e % 32;
      const float dl = d * static_cast<float>(sc[e / 16] & 15), ml = dmin * static_cast<float>(sc[e / 16] >> 4);
      const float q = static_cast<float>((qs[32 * h + l] >> (2 * s)) & 3);
      y[e] = dl * q - ml;
    }
  }
}

// Q3_K: hmask[32], qs[64], scales[12], fp16 d. Sixteen 6-bit signed scales (one per 16 elements):
// low 4 bits from scales[i % 8] (nibble i / 8), high 2 bits from scales[8 + i % 4] (bits
// 2 (i / 4)), minus 32. Element e = 128 h + 32 s + l: low 2 bits from qs[32 h + l] >> 2s, and
// 4 is subtracted where bit e / 32 of hmask[l] is clear. x = d sc q.
void q3_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 110, y += 256) {
    const uint8_t* hm = b;
    const uint8_t* qs = b + 32;
    const uint8_t* sb = b + 96;
    const float d = half_to_float(rd16(b + 108));
    float dl[16];
    for (int j = 0; j < 16; ++j) {
      const int lo = (sb[j % 8] >> (4 * (j / 8))) & 0x0f, hi = (sb[8 + j % 4] >> (2 * (j / 4))) & 3;
      dl[j] = d * static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(lo | (hi << 4))) - 32);
    }
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, s = (e / 32) % 4, l = e % 32;
      const int q = ((qs[32 * h + l] >> (2 * s)) & 3) - (((hm[l] >> (e / 32)) & 1) ? 0 : 4);
      y[e] = dl[e / 16] * static_cast<float>(q);
    }
  }
}

// Q5_K: fp16 d, fp16 dmin, 12 scale bytes as Q4_K (eight 6-bit scales and mins, one per 32
// elements), qh[32], qs[128]. Element e = 64 g + 32 s + l: nibble s of qs[32 g + l], plus bit e / 32
// of qh[l] as bit 4. x = d sc q - dmin m.
void q5_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 176, y += 256) {
    const float d = half_to_float(rd16(b)), dmin = half_to_float(rd16(b + 2));
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int sb = 0; sb < 8; ++sb) {
      uint8_t sc, m;
      scale_min_k4(sb, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      const int g = sb / 2, s = sb % 2;
      for (int l = 0; l < 32; ++l) {
        const int q = ((qs[32 * g + l] >> (4 * s)) & 0x0f) | (((qh[l] >> sb) & 1) << 4);
        y[32 * sb + l] = d1 * static_cast<float>(q) - m1;
      }
    }
  }
}

void q6_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 210) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = half_to_float(rd16(b + 208));
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

#ifdef QINTERP_GGUF_AVX2
// AVX2 twins of q2_k, q3_k and q5_k: the same operations per element in the same order (one
// multiply, then one subtraction; no fused multiply-add), so the results are equal bit for bit
// (tests/cpp/test_gguf_blocks.cpp checks this against the scalar decoders above).
bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

__attribute__((target("avx2"))) inline __m256i srl8(__m256i v, int n) {  // per-byte v >> n
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(n)), _mm256_set1_epi8(static_cast<char>(0xff >> n)));
}

// y[0..32) = float(q[k]) * d[k / 8] - m[k / 8] for 32 unsigned bytes q (m may be null).
__attribute__((target("avx2"))) inline void emit32_u8(__m256i q, const float* d, const float* m, float* y) {
  alignas(32) uint8_t b[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(b), q);
  for (int k = 0; k < 4; ++k) {
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 8 * k))));
    __m256 v = _mm256_mul_ps(_mm256_set1_ps(d[k]), f);
    if (m) v = _mm256_sub_ps(v, _mm256_set1_ps(m[k]));
    _mm256_storeu_ps(y + 8 * k, v);
  }
}

__attribute__((target("avx2"))) void q2_k_avx2(const uint8_t* b, float* y, int64_t nb) {
  const __m256i three = _mm256_set1_epi8(3);
  for (int64_t i = 0; i < nb; ++i, b += 84, y += 256) {
    const uint8_t* sc = b;
    const float d = half_to_float(rd16(b + 80)), dmin = half_to_float(rd16(b + 82));
    for (int h = 0; h < 2; ++h) {
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16 + 32 * h));
      for (int s = 0; s < 4; ++s) {
        const int j = 8 * h + 2 * s;  // the scale of elements 0..15 of this run; j + 1 for 16..31
        const float dl[4] = {d * static_cast<float>(sc[j] & 15), d * static_cast<float>(sc[j] & 15),
                             d * static_cast<float>(sc[j + 1] & 15), d * static_cast<float>(sc[j + 1] & 15)};
        const float ml[4] = {dmin * static_cast<float>(sc[j] >> 4), dmin * static_cast<float>(sc[j] >> 4),
                             dmin * static_cast<float>(sc[j + 1] >> 4), dmin * static_cast<float>(sc[j + 1] >> 4)};
        emit32_u8(_mm256_and_si256(srl8(qs, 2 * s), three), dl, ml, y + 128 * h + 32 * s);
      }
    }
  }
}

__attribute__((target("avx2"))) void q3_k_avx2(const uint8_t* b, float* y, int64_t nb) {
  const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
  for (int64_t i = 0; i < nb; ++i, b += 110, y += 256) {
    const uint8_t* sb = b + 96;
    const float d = half_to_float(rd16(b + 108));
    float dl[16];
    for (int j = 0; j < 16; ++j) {
      const int lo = (sb[j % 8] >> (4 * (j / 8))) & 0x0f, hi = (sb[8 + j % 4] >> (2 * (j / 4))) & 3;
      dl[j] = d * static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(lo | (hi << 4))) - 32);
    }
    const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    for (int h = 0; h < 2; ++h) {
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 + 32 * h));
      for (int s = 0; s < 4; ++s) {
        const int e0 = 128 * h + 32 * s;
        const __m256i ql = _mm256_and_si256(srl8(qs, 2 * s), three);
        const __m256i hb = _mm256_and_si256(srl8(hm, e0 / 32), one);
        // q = ql - 4 where the high bit is clear: in [-4, 3], as signed bytes
        const __m256i q = _mm256_sub_epi8(ql, _mm256_andnot_si256(_mm256_cmpeq_epi8(hb, one), four));
        alignas(32) int8_t qb[32];
        _mm256_store_si256(reinterpret_cast<__m256i*>(qb), q);
        for (int k = 0; k < 4; ++k) {
          const __m256 f =
              _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qb + 8 * k))));
          _mm256_storeu_ps(y + e0 + 8 * k, _mm256_mul_ps(_mm256_set1_ps(dl[(e0 + 8 * k) / 16]), f));
        }
      }
    }
  }
}

__attribute__((target("avx2"))) void q5_k_avx2(const uint8_t* b, float* y, int64_t nb) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
  for (int64_t i = 0; i < nb; ++i, b += 176, y += 256) {
    const float d = half_to_float(rd16(b)), dmin = half_to_float(rd16(b + 2));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    for (int sb = 0; sb < 8; ++sb) {
      uint8_t sc, m;
      scale_min_k4(sb, b + 4, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      const float dd[4] = {d1, d1, d1, d1}, mm[4] = {m1, m1, m1, m1};
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 48 + 32 * (sb / 2)));
      const __m256i lo = _mm256_and_si256(srl8(qs, 4 * (sb % 2)), low4);
      const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(srl8(qh, sb), one), 4);  // bytes stay < 32
      emit32_u8(_mm256_or_si256(lo, hi), dd, mm, y + 32 * sb);
    }
  }
}
#endif

// The number of blocks n elements of type t fill; Error for a type without a decoder or a
// partial block.
int64_t whole_blocks(io::GgmlType t, int64_t n) {
  int64_t be = 0, bb = 0;
  if (!io::ggml_block_layout(t, &be, &bb)) fail("dequantize_gguf: no decoder for ggml type ", io::ggml_type_name(t));
  if (n % be != 0) fail("dequantize_gguf: ", n, " elements is not a whole number of ", io::ggml_type_name(t), " blocks");
  return n / be;
}

}  // namespace

void dequantize_gguf_cpu_reference(io::GgmlType t, const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t nb = whole_blocks(t, n);
  switch (t) {
    case io::GgmlType::Q2_K: q2_k(s, dst, nb); return;
    case io::GgmlType::Q3_K: q3_k(s, dst, nb); return;
    case io::GgmlType::Q5_K: q5_k(s, dst, nb); return;
    default: dequantize_gguf_cpu(t, src, dst, n);  // the other types have one (scalar) decoder
  }
}

void dequantize_gguf_cpu(io::GgmlType t, const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t nb = whole_blocks(t, n);
  switch (t) {
    case io::GgmlType::F32: std::memcpy(dst, s, n * 4); return;
    case io::GgmlType::F16: for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(rd16(s + 2 * i)); return;
    case io::GgmlType::BF16: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(rd16(s + 2 * i)); return;
    case io::GgmlType::Q8_0: q8_0(s, dst, nb); return;
    case io::GgmlType::Q4_0: q4_0(s, dst, nb); return;
    case io::GgmlType::Q4_1: q4_1(s, dst, nb); return;
    case io::GgmlType::Q5_0: q5<false>(s, dst, nb); return;
    case io::GgmlType::Q5_1: q5<true>(s, dst, nb); return;
#ifdef QINTERP_GGUF_AVX2
    case io::GgmlType::Q2_K: cpu_has_avx2() ? q2_k_avx2(s, dst, nb) : q2_k(s, dst, nb); return;
    case io::GgmlType::Q3_K: cpu_has_avx2() ? q3_k_avx2(s, dst, nb) : q3_k(s, dst, nb); return;
    case io::GgmlType::Q5_K: cpu_has_avx2() ? q5_k_avx2(s, dst, nb) : q5_k(s, dst, nb); return;
#else
    case io::GgmlType::Q2_K: q2_k(s, dst, nb); return;
    case io::GgmlType::Q3_K: q3_k(s, dst, nb); return;
    case io::GgmlType::Q5_K: q5_k(s, dst, nb); return;
#endif
    case io::GgmlType::Q4_K: q4_k(s, dst, nb); return;
    case io::GgmlType::Q6_K: q6_k(s, dst, nb); return;
    default: fail("dequantize_gguf: no decoder for ggml type ", io::ggml_type_name(t));
  }
}

}  // namespace qinterp::quant
