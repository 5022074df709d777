#include <cuda_fp16.h>

#include "gguf_dequant.cuh"

namespace qinterp::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per output element; a warp covers one 32-element block, so the block's scale is
// read once per warp from L1 and the quants are read coalesced.
__global__ void q8_0_kernel(const uint8_t* __restrict__ src, float* __restrict__ dst, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const uint8_t* b = src + (i >> 5) * 34;
  const float d = __half2float(*reinterpret_cast<const __half*>(b));
  dst[i] = static_cast<int8_t>(b[2 + (i & 31)]) * d;
}

__global__ void q4_kernel(const uint8_t* __restrict__ src, float* __restrict__ dst, int64_t n,
                          bool has_min) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int stride = has_min ? 20 : 18;
  const uint8_t* b = src + (i >> 5) * stride;
  const float d = __half2float(*reinterpret_cast<const __half*>(b));
  const int j = static_cast<int>(i & 31);
  const uint8_t byte = b[(has_min ? 4 : 2) + (j & 15)];
  const int q = j < 16 ? (byte & 0x0f) : (byte >> 4);
  if (has_min)
    dst[i] = q * d + __half2float(*reinterpret_cast<const __half*>(b + 2));
  else
    dst[i] = (q - 8) * d;
}

inline unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t dequantize_q8_0(const void* src, float* dst, int64_t n_blocks, cudaStream_t stream) {
  const int64_t n = n_blocks * 32;
  if (n == 0) return cudaSuccess;
  q8_0_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<const uint8_t*>(src), dst, n);
  return cudaGetLastError();
}

cudaError_t dequantize_q4_0(const void* src, float* dst, int64_t n_blocks, cudaStream_t stream) {
  const int64_t n = n_blocks * 32;
  if (n == 0) return cudaSuccess;
  q4_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<const uint8_t*>(src), dst, n, false);
  return cudaGetLastError();
}

cudaError_t dequantize_q4_1(const void* src, float* dst, int64_t n_blocks, cudaStream_t stream) {
  const int64_t n = n_blocks * 32;
  if (n == 0) return cudaSuccess;
  q4_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<const uint8_t*>(src), dst, n, true);
  return cudaGetLastError();
}

}  // namespace qinterp::cuda
