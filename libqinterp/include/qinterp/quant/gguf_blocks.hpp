// ggml block formats decoded on the CPU (the reference for the CUDA kernels in cuda/).
// A weight of ggml shape ne = [in, out] is `out` rows of `in` elements, each row a run of blocks:
//   Q8_0  32 elems / 34 bytes: fp16 d, int8 q[32]                  x = d * q
//   Q4_0  32 elems / 18 bytes: fp16 d, 16 bytes, low nibbles are elements 0..15, high 16..31
//                                                                    x = d * (q - 8)
//   Q4_1  32 elems / 20 bytes: fp16 d, fp16 m, nibbles as Q4_0     x = d * q + m
//   Q2_K 84, Q3_K 110, Q4_K 144, Q5_K 176, Q6_K 210 bytes per 256 elems: ggml's k-quant
//   super-blocks (each decoder's comment in gguf_blocks.cpp states its layout).
#pragma once
#include <cstdint>

#include "qinterp/io/gguf.hpp"

namespace qinterp::quant {

// IEEE half / bfloat16 bits to float (exact).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t h);

// Decodes n elements of type t (n a multiple of the block size) from src into dst, with the AVX2
// decoders (Q2_K, Q3_K, Q5_K) where the CPU has AVX2. Throws Error for a type without a decoder.
void dequantize_gguf_cpu(io::GgmlType t, const void* src, float* dst, int64_t n);
// The same with the plain scalar decoders only: the reference the vectorised ones equal bit for bit.
void dequantize_gguf_cpu_reference(io::GgmlType t, const void* src, float* dst, int64_t n);

}  // namespace qinterp::quant
