#include "qinterp/quant/reference.hpp"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <vector>

namespace qinterp::quant::ref {

namespace {

const float kNF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// e2m1 magnitudes {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12 for the low three bits; bit 3 is the sign.
const float kFP4[16] = {0.0f,        0.0625f / 12, 8.0f / 12,  1.0f,  4.0f / 12,  6.0f / 12,  2.0f / 12,  3.0f / 12,
                        0.0f,        -0.0625f / 12, -8.0f / 12, -1.0f, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12};
// Value order of the codes. FP4 has two zeros (0 and 8); the positive one sorts first, so a
// tiny positive value lands on code 8 — as bitsandbytes' argsort leaves them.
const uint8_t kNF4Order[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
const uint8_t kFP4Order[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

struct Bounds {
  float nf4[15], fp4[15];
  Bounds() {
    for (int i = 0; i < 15; ++i) {
      nf4[i] = (kNF4[kNF4Order[i]] + kNF4[kNF4Order[i + 1]]) / 2.0f;
      fp4[i] = (kFP4[kFP4Order[i]] + kFP4[kFP4Order[i + 1]]) / 2.0f;
    }
  }
};
const Bounds& bounds() {
  static const Bounds b;
  return b;
}

}  // namespace

const float* fourbit_code(FourBit t) { return t == FourBit::NF4 ? kNF4 : kFP4; }
const float* fourbit_bounds(FourBit t) { return t == FourBit::NF4 ? bounds().nf4 : bounds().fp4; }
const uint8_t* fourbit_order(FourBit t) { return t == FourBit::NF4 ? kNF4Order : kFP4Order; }

uint8_t fourbit_encode(float s, FourBit t) {
  const float* b = fourbit_bounds(t);
  int k = 0;
  while (k < 15 && b[k] < s) ++k;  // torch.bucketize (right=False): ties go to the lower slot
  return fourbit_order(t)[k];
}

void quantize_4bit(const float* x, int64_t n, int64_t block, FourBit t, uint8_t* packed, float* absmax) {
  const int64_t nb = (n + block - 1) / block, full = n / block;
  std::vector<float> s(static_cast<size_t>(n + 1), 0.0f);  // padded with 0 to an even count
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * block, hi = std::min(n, lo + block);
    float m = 0.0f;
    for (int64_t i = lo; i < hi; ++i) m = std::max(m, std::fabs(x[i]));
    const float mc = std::max(m, 1e-38f);
    if (b < full) {  // bitsandbytes multiplies by the reciprocal in full blocks ...
      absmax[b] = m;
      const float inv = 1.0f / mc;
      for (int64_t i = lo; i < hi; ++i) s[i] = std::min(1.0f, std::max(-1.0f, x[i] * inv));
    } else {  // ... and divides in the last, partial one, whose stored absmax is clamped
      absmax[b] = mc;
      for (int64_t i = lo; i < hi; ++i) s[i] = std::min(1.0f, std::max(-1.0f, x[i] / mc));
    }
  }
  for (int64_t i = 0; i < n; i += 2)
    packed[i / 2] = static_cast<uint8_t>((fourbit_encode(s[i], t) << 4) | fourbit_encode(s[i + 1], t));
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t block, FourBit t, float* out) {
  const float* code = fourbit_code(t);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = packed[i / 2];
    out[i] = code[(i & 1) ? (byte & 15) : (byte >> 4)] * absmax[i / block];
  }
}

void quantize_blockwise8(const float* x, int64_t n, int64_t block, const float* code, uint8_t* q, float* absmax) {
  // bitsandbytes' CPU quantizer (0.50): [-1, 1] is cut into 65536 grid points, each mapped once
  // to the nearest code by midpoints; a value goes to the grid point round((v + 1) / 2 * 65535).
  std::vector<uint8_t> lut(65536);
  float mid[255];
  for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (code[i] + code[i + 1]);
  int c = 0;
  for (int i = 0; i < 65536; ++i) {
    const float v = -1.0f + (2.0f * static_cast<float>(i)) / 65535.0f;
    while (c < 255 && mid[c] < v) ++c;
    lut[i] = static_cast<uint8_t>(c);
  }
  for (int64_t lo = 0; lo < n; lo += block) {
    const int64_t hi = std::min(n, lo + block);
    float m = 0.0f;
    for (int64_t i = lo; i < hi; ++i) m = std::max(m, std::fabs(x[i]));
    absmax[lo / block] = m;
    if (m == 0.0f) {
      for (int64_t i = lo; i < hi; ++i) q[i] = 0;
      continue;
    }
    const float inv = 1.0f / m;
    for (int64_t i = lo; i < hi; ++i) {
      const float v = std::min(1.0f, std::max(-1.0f, x[i] * inv));
      const float t = (v + 1.0f) * 0.5f;
      volatile float scaled = t * 65535.0f;  // rounded before the + 0.5, no fused multiply-add
      q[i] = lut[static_cast<uint16_t>(scaled + 0.5f)];
    }
  }
}

void dequantize_blockwise8(const uint8_t* q, const float* absmax, int64_t n, int64_t block, const float* code,
                           float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = code[q[i]] * absmax[i / block];
}

void dequantize_absmax(const uint8_t* q, const float* absmax2, float offset, const float* code, int64_t nblocks,
                       float* out) {
  for (int64_t b = 0; b < nblocks; ++b) {
    volatile float v = code[q[b]] * absmax2[b / 256];  // rounded before the add, as bitsandbytes does
    out[b] = v + offset;
  }
}

void gemv_4bit(const uint8_t* packed, const float* absmax, int64_t rows, int64_t cols, int64_t block, FourBit t,
               const float* x, float* y) {
  const float* code = fourbit_code(t);
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      const uint8_t byte = packed[i / 2];
      const float w = code[(i & 1) ? (byte & 15) : (byte >> 4)] * absmax[i / block];
      acc += static_cast<double>(w) * x[c];
    }
    y[r] = static_cast<float>(acc);
  }
}

void quantize_q8(const float* x, int64_t n, int8_t* q, float* d) {
  for (int64_t j = 0; j < n / 32; ++j) {
    float m = 0.0f;
    for (int i = 0; i < 32; ++i) m = std::max(m, std::fabs(x[j * 32 + i]));
    d[j] = m / 127.0f;
    const float inv = m > 0.0f ? 127.0f / m : 0.0f;
    for (int i = 0; i < 32; ++i) q[j * 32 + i] = static_cast<int8_t>(std::nearbyint(x[j * 32 + i] * inv));
  }
}

const int8_t* fourbit_code_q8(FourBit t) {
  static const auto table = [](FourBit f) {
    std::array<int8_t, 16> a{};
    for (int i = 0; i < 16; ++i) a[static_cast<size_t>(i)] = static_cast<int8_t>(std::nearbyint(127.0f * fourbit_code(f)[i]));
    return a;
  };
  static const std::array<int8_t, 16> nf4 = table(FourBit::NF4), fp4 = table(FourBit::FP4);
  return t == FourBit::NF4 ? nf4.data() : fp4.data();
}

void gemv_4bit_q8(const uint8_t* packed, const float* absmax, int64_t rows, int64_t cols, int64_t block, FourBit t,
                  const int8_t* q, const float* d, float* y) {
  const int8_t* code = fourbit_code_q8(t);
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0.0;
    for (int64_t c0 = 0; c0 < cols; c0 += block) {
      double blk = 0.0;
      for (int64_t j = c0; j < c0 + block; j += 32) {
        int64_t dot = 0;
        for (int64_t c = j; c < j + 32; ++c) {
          const int64_t i = r * cols + c;
          dot += code[(i & 1) ? (packed[i / 2] & 15) : (packed[i / 2] >> 4)] * q[c];
        }
        blk += static_cast<double>(d[j / 32]) * static_cast<double>(dot);
      }
      acc += static_cast<double>(absmax[(r * cols + c0) / block]) * blk;
    }
    y[r] = static_cast<float>(acc / 127.0);
  }
}

void gemv_grouped_q8(const uint8_t* packed, const float* scale, const float* zero, int64_t rows, int64_t cols,
                     int64_t group, const int8_t* q, const float* d, float* y) {
  const int64_t ngroups = (cols + group - 1) / group, row_bytes = (cols + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = packed + r * row_bytes;
    double acc = 0.0;
    for (int64_t g = 0; g < ngroups; ++g) {
      const double ze = zero[r * ngroups + g];
      double grp = 0.0;
      for (int64_t j = g * group; j < std::min(cols, (g + 1) * group); j += 32) {
        double dot = 0.0;
        for (int64_t c = j; c < j + 32; ++c)
          dot += (((c & 1) ? (row[c / 2] & 15) : (row[c / 2] >> 4)) - ze) * q[c];
        grp += static_cast<double>(d[j / 32]) * dot;
      }
      acc += static_cast<double>(scale[r * ngroups + g]) * grp;
    }
    y[r] = static_cast<float>(acc);
  }
}

void gemv_q8_blocks(const int8_t* q, const float* d, int64_t rows, int64_t cols, const float* x, int64_t nx,
                    float* y) {
  const int64_t runs = cols / 32;
  for (int64_t k = 0; k < nx; ++k) {
    const float* xk = x + k * cols;
    for (int64_t r = 0; r < rows; ++r) {
      float s[8] = {};
      for (int64_t j = 0; j < runs; ++j) {
        const int8_t* qj = q + r * cols + j * 32;
        const float* xj = xk + j * 32;
        for (int i = 0; i < 8; ++i) {
          float t = xj[i] * static_cast<float>(qj[i]);
          for (int c = i + 8; c < 32; c += 8) t = std::fma(xj[c], static_cast<float>(qj[c]), t);
          s[i] = std::fma(t, d[r * runs + j], s[i]);
        }
      }
      y[k * rows + r] = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    }
  }
}

}  // namespace qinterp::quant::ref
