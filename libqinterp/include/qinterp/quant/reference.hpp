// Reference implementations of the quantization formats on raw host pointers: plain scalar
// loops, no torch, no threads. They define the bits (matched against bitsandbytes and GPTQ in the
// tests); the vectorized CPU kernels (quantize.hpp) and the CUDA kernels (libqinterp/cuda/) are
// tested against them.
//
// 4-bit layout (bitsandbytes): the tensor is flattened row-major and cut into blocks of `block`
// values; absmax[b] = max |x| over block b (float32); x / absmax goes to the nearest of the 16
// codes (ties to the lower code); two codes per byte, the even element in the high nibble.
#pragma once
#include <cstdint>

namespace qinterp::quant::ref {

enum class FourBit { NF4 = 0, FP4 = 1 };

// The 16 code values indexed by 4-bit code (FP4: e2m1 with sign in bit 3, divided by 12).
const float* fourbit_code(FourBit t);
// Midpoints between neighbouring codes in ascending value order (15), and the code of each of
// the 16 value-ordered slots, as bitsandbytes' CPU path builds them.
const float* fourbit_bounds(FourBit t);
const uint8_t* fourbit_order(FourBit t);

// Maps one normalised value s in [-1, 1] to its code (count of bounds below s).
uint8_t fourbit_encode(float s, FourBit t);

// x: n floats; packed: (n + 1) / 2 bytes; absmax: ceil(n / block) floats.
void quantize_4bit(const float* x, int64_t n, int64_t block, FourBit t, uint8_t* packed, float* absmax);
// out[i] = code[q_i] * absmax[i / block], float32.
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t block, FourBit t, float* out);

// bitsandbytes' 8-bit blockwise quantization with a 256-entry sorted code (the dynamic map):
// absmax per block, then the code nearest to x / absmax as resolved on a 65536-point grid of
// [-1, 1] (bitsandbytes 0.50's CPU lookup table), an all-zero block gives code 0.
void quantize_blockwise8(const float* x, int64_t n, int64_t block, const float* code, uint8_t* q, float* absmax);
void dequantize_blockwise8(const uint8_t* q, const float* absmax, int64_t n, int64_t block, const float* code,
                           float* out);

// Double-quantized absmax back to float32: code[q[b]] * absmax2[b / 256] + offset (two roundings).
void dequantize_absmax(const uint8_t* q, const float* absmax2, float offset, const float* code, int64_t nblocks,
                       float* out);

// y[r] = sum_k W[r, k] x[k] for a 4-bit weight [rows, cols] (row-major, flattened blocks), with
// float32 absmax; accumulates in double.
void gemv_4bit(const uint8_t* packed, const float* absmax, int64_t rows, int64_t cols, int64_t block, FourBit t,
               const float* x, float* y);

// ---- decode=q8 (QuantSpec): int8 activations against the weights' codes, as llama.cpp's Q8_0.
// x is cut into runs of 32 values; per run d = amax / 127 and q = round-half-even(x * (127 /
// amax)), both in float32 (an all-zero run: d = 0, q = 0). n % 32 == 0; q: n bytes, d: n / 32.
void quantize_q8(const float* x, int64_t n, int8_t* q, float* d);
// The 16 code values as int8, round(127 * code): the 4-bit weights' side of the integer dot.
const int8_t* fourbit_code_q8(FourBit t);
// y[r] = (1 / 127) sum over the row's blocks b of absmax[b] * sum over b's runs j of d[j] *
// sum_{c in j} code_q8[code[r, c]] * q[c], accumulated in double; the 4-bit layout above, cols % block == 0,
// block % 32 == 0.
void gemv_4bit_q8(const uint8_t* packed, const float* absmax, int64_t rows, int64_t cols, int64_t block, FourBit t,
                  const int8_t* q, const float* d, float* y);
// The grouped rtn/gptq layout (codes two per byte, high nibble first, every row on a byte):
// y[r] = sum_g scale[r, g] * sum over g's runs j of d[j] * sum_{c in j} (code[r, c] - zero[r, g]) * q[c],
// accumulated in double; group % 32 == 0 (group == cols for one group a row), cols % group == 0
// or the last group shorter by whole runs.
void gemv_grouped_q8(const uint8_t* packed, const float* scale, const float* zero, int64_t rows, int64_t cols,
                     int64_t group, const int8_t* q, const float* d, float* y);

// ---- Q8 blocks (quantize.hpp Q8Blocks): a float32 weight held as d[r, j] * q[r, c], runs j of 32.
// y[k, r] = sum_j d[r, j] * t[k, r, j], t the fp32 sum of x[k, c] * q[r, c] over run j, in the
// AVX2 kernel's lane order so that the two agree bit for bit: lane i (0..7) of a run starts from
// x[i] * q[i] and adds the products of columns i + 8, i + 16, i + 24 by fma; per lane, s_i =
// fma(t_i, d, s_i) over the runs; then y = ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)).
// cols % 32 == 0; x [nx, cols], y [nx, rows].
void gemv_q8_blocks(const int8_t* q, const float* d, int64_t rows, int64_t cols, const float* x, int64_t nx,
                    float* y);

}  // namespace qinterp::quant::ref
