// CUDA kernels for bitsandbytes' 4-bit formats (NF4, FP4). Layout and bit-level definition:
// include/qinterp/quant/reference.hpp, whose CPU functions are these kernels' twins in the tests.
// Raw device pointers and a stream only: no torch types.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace qinterp::cuda {

enum InDType { kF32 = 0, kF16 = 1, kBF16 = 2 };

// x: n values of dtype `in`; packed: (n + 1) / 2 bytes; absmax: ceil(n / block) floats.
// type: 0 = NF4, 1 = FP4. block: power of two, 32 .. 4096.
cudaError_t quantize_4bit(const void* x, InDType in, int64_t n, int block, int type, uint8_t* packed,
                          float* absmax, cudaStream_t stream);

// out: n values of dtype `out_dtype` = code[q] * absmax[i / block] rounded once to that dtype.
cudaError_t dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int block, int type,
                            void* out, InDType out_dtype, cudaStream_t stream);

// y[b, r] = sum_k W[r, k] x[b, k] for W [rows, cols] 4-bit (cols % block == 0, cols % 32 == 0),
// x [batch, cols] and y [batch, rows] of dtype `io`, float32 accumulation. The absmax is either
// float32 (absmax != null) or double-quantized: code2[qabs[b]] * absmax2[b / 256] + offset.
cudaError_t gemv_4bit(const uint8_t* packed, const float* absmax, const uint8_t* qabs, const float* absmax2,
                      float offset, const float* code2, int64_t rows, int64_t cols, int block, int type,
                      const void* x, void* y, InDType io, int64_t batch, cudaStream_t stream);

// Launch the fp16 GEMV kernels with programmatic dependent launch (compute capability 9.0+; a
// no-op elsewhere). Each kernel then lets the next one in the stream begin early, and itself
// starts while the previous kernel drains: it loads its first weights and absmax and builds its
// code table, then waits for that kernel before it reads x or writes y. Safe only when the
// packed weights, absmax and double-quantization tables were not written by the kernel issued
// just before (true for a decoder's preloaded weights, not for quantize-then-multiply). Off by
// default; process-wide.
void set_gemv_programmatic_launch(bool on);

}  // namespace qinterp::cuda
