// CUDA decoders for ggml blocks (layouts in include/qinterp/quant/gguf_blocks.hpp, whose CPU
// functions are the reference these are tested against). Raw pointers and a stream only: no
// torch types, so this library compiles wherever nvcc does.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace qinterp::cuda {

// src: n_blocks whole blocks in device memory; dst: n_blocks * 32 floats in device memory.
cudaError_t dequantize_q8_0(const void* src, float* dst, int64_t n_blocks, cudaStream_t stream);
cudaError_t dequantize_q4_0(const void* src, float* dst, int64_t n_blocks, cudaStream_t stream);
cudaError_t dequantize_q4_1(const void* src, float* dst, int64_t n_blocks, cudaStream_t stream);

}  // namespace qinterp::cuda
