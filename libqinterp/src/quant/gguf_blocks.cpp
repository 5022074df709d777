#include "qinterp/quant/gguf_blocks.hpp"

#include <cstring>

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

}  // namespace

void dequantize_gguf_cpu(io::GgmlType t, const void* src, float* dst, int64_t n) {
  int64_t be = 0, bb = 0;
  if (!io::ggml_block_layout(t, &be, &bb)) fail("dequantize_gguf: no decoder for ggml type ", io::ggml_type_name(t));
  if (n % be != 0) fail("dequantize_gguf: ", n, " elements is not a whole number of ", io::ggml_type_name(t), " blocks");
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t nb = n / be;
  switch (t) {
    case io::GgmlType::F32: std::memcpy(dst, s, n * 4); return;
    case io::GgmlType::F16: for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(rd16(s + 2 * i)); return;
    case io::GgmlType::BF16: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(rd16(s + 2 * i)); return;
    case io::GgmlType::Q8_0: q8_0(s, dst, nb); return;
    case io::GgmlType::Q4_0: q4_0(s, dst, nb); return;
    case io::GgmlType::Q4_1: q4_1(s, dst, nb); return;
    case io::GgmlType::Q5_0: q5<false>(s, dst, nb); return;
    case io::GgmlType::Q5_1: q5<true>(s, dst, nb); return;
    case io::GgmlType::Q4_K: q4_k(s, dst, nb); return;
    case io::GgmlType::Q6_K: q6_k(s, dst, nb); return;
    default: fail("dequantize_gguf: no decoder for ggml type ", io::ggml_type_name(t));
  }
}

}  // namespace qinterp::quant
