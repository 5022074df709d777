// CUDA twins of reference.cpp's 4-bit functions. Float arithmetic is spelled with the _rn
// intrinsics where the CPU does separate roundings, so that nvcc cannot fuse them into an FMA and
// the bytes stay identical to the CPU's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "quant4.cuh"

namespace qinterp::cuda {

namespace {

__constant__ float kCode[2][16] = {
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
     -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
     0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f,
     1.0f},
    {0.0f, 0.0625f / 12, 8.0f / 12, 1.0f, 4.0f / 12, 6.0f / 12, 2.0f / 12, 3.0f / 12, 0.0f, -0.0625f / 12,
     -8.0f / 12, -1.0f, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12}};
__constant__ float kBounds[2][15];  // set once from the host (same float arithmetic as reference.cpp)
// Code of each value-ordered slot, one nibble per slot: FP4 11 10 13 12 15 14 9 0 8 1 6 7 4 5 2 3.
constexpr unsigned long long kFP4Order = 0x3254761809EFCDABull;

template <class T>
__device__ __forceinline__ float load_f(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load_f<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float load_f<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <>
__device__ __forceinline__ float load_f<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

template <class T>
__device__ __forceinline__ T store_cast(float v);
template <>
__device__ __forceinline__ float store_cast<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half store_cast<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 store_cast<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ unsigned encode(float s, int type) {
  unsigned k = 0;
#pragma unroll
  for (int j = 0; j < 15; ++j) k += kBounds[type][j] < s;
  return type == 0 ? k : static_cast<unsigned>((kFP4Order >> (4 * k)) & 15);
}

// One warp per quantization block.
template <class T>
__global__ void quantize_4bit_kernel(const T* __restrict__ x, int64_t n, int block, int type,
                                     uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  const int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  const int64_t nb = (n + block - 1) / block;
  if (b >= nb) return;
  const int64_t lo = b * block;
  const int64_t len = n - lo < block ? n - lo : block;
  float m = 0.0f;
  for (int64_t i = lane; i < len; i += 32) m = fmaxf(m, fabsf(load_f(x, lo + i)));
#pragma unroll
  for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float mc = fmaxf(m, 1e-38f);
  const bool full = len == block;
  const float inv = __fdiv_rn(1.0f, mc);
  if (lane == 0) absmax[b] = full ? m : mc;
  for (int64_t p = lane; 2 * p < len; p += 32) {
    float s[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = 2 * p + h;
      if (i < len) {
        const float v = load_f(x, lo + i);
        s[h] = fminf(1.0f, fmaxf(-1.0f, full ? __fmul_rn(v, inv) : __fdiv_rn(v, mc)));
      } else {
        s[h] = 0.0f;  // odd element count: the last byte's low nibble encodes 0
      }
    }
    packed[lo / 2 + p] = static_cast<uint8_t>((encode(s[0], type) << 4) | encode(s[1], type));
  }
}

// Each thread decodes 8 bytes (16 values, all in one block since block >= 32).
template <class T>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                       int64_t n, int block, int type, T* __restrict__ out) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kCode[type][threadIdx.x];
  __syncthreads();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i0 = t * 16;
  if (i0 >= n) return;
  const float a = absmax[i0 / block];
  if (i0 + 16 <= n) {
    const uint2 w = *reinterpret_cast<const uint2*>(packed + t * 8);
    alignas(16) T v[16];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const unsigned byte = ((j < 4 ? w.x : w.y) >> (8 * (j & 3))) & 0xff;
      v[2 * j] = store_cast<T>(code[byte >> 4] * a);
      v[2 * j + 1] = store_cast<T>(code[byte & 15] * a);
    }
    constexpr int kVec = 16 / sizeof(T);  // 16-byte stores
#pragma unroll
    for (int j = 0; j < 16; j += kVec) *reinterpret_cast<uint4*>(out + i0 + j) = *reinterpret_cast<uint4*>(v + j);
  } else {
    for (int64_t i = i0; i < n; ++i) {
      const unsigned byte = packed[i / 2];
      out[i] = store_cast<T>(code[(i & 1) ? (byte & 15) : (byte >> 4)] * a);
    }
  }
}

constexpr int kRowsPerWarp = 4, kWarps = 8, kMaxSmemCols = 11264;  // x staged in shared memory up to 44 KiB

// y = W x: each warp owns kRowsPerWarp rows; a lane takes 32-weight chunks (16 bytes per row),
// loads their 32 inputs once and uses them for every row it owns. The code table is replicated
// per lane in shared memory so that lookups never collide on a bank.
template <class T>
__global__ void __launch_bounds__(kWarps * 32) gemv_4bit_kernel(
    const uint8_t* __restrict__ packed, const float* __restrict__ absmax, const uint8_t* __restrict__ qabs,
    const float* __restrict__ absmax2, float offset, const float* __restrict__ code2, int64_t rows, int64_t cols,
    int block, int type, const T* __restrict__ x, T* __restrict__ y) {
  extern __shared__ float smem[];
  float* lut = smem;            // [16][32]
  float* xs = smem + 16 * 32;   // [cols] when staged
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bidx = blockIdx.y;
  const T* xb = x + bidx * cols;
  const bool staged = cols <= kMaxSmemCols;
  for (int i = threadIdx.x; i < 16 * 32; i += blockDim.x) lut[i] = kCode[type][i >> 5];
  if (staged)
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) xs[i] = load_f(xb, i);
  __syncthreads();
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  if (r0 >= rows) return;
  const int64_t chunks = cols / 32, bpr = cols / block;
  float acc[kRowsPerWarp] = {};
  for (int64_t c = lane; c < chunks; c += 32) {
    float xv[32];
    if (staged) {
#pragma unroll
      for (int j = 0; j < 32; j += 4) {
        const float4 f = *reinterpret_cast<const float4*>(xs + c * 32 + j);
        xv[j] = f.x, xv[j + 1] = f.y, xv[j + 2] = f.z, xv[j + 3] = f.w;
      }
    } else {
#pragma unroll
      for (int j = 0; j < 32; ++j) xv[j] = load_f(xb, c * 32 + j);
    }
    const int64_t kb = (c * 32) / block;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = r0 + r;
      if (row >= rows) break;
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(packed + row * (cols / 2)) + c);
      const int64_t b = row * bpr + kb;
      const float a = absmax ? absmax[b] : __fadd_rn(__fmul_rn(code2[qabs[b]], absmax2[b >> 8]), offset);
      const unsigned words[4] = {w.x, w.y, w.z, w.w};
      float s = 0.0f;
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const unsigned byte = (words[q] >> (8 * j)) & 0xff;
          s = fmaf(lut[((byte >> 4) << 5) | lane], xv[q * 8 + 2 * j], s);
          s = fmaf(lut[((byte & 15) << 5) | lane], xv[q * 8 + 2 * j + 1], s);
        }
      acc[r] = fmaf(s, a, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && r0 + r < rows) y[bidx * rows + r0 + r] = store_cast<T>(v);
  }
}

cudaError_t init_bounds() {
  static cudaError_t done = [] {
    float b[2][15];
    const unsigned char order[2][16] = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                        {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3}};
    float code[2][16];
    cudaError_t e = cudaMemcpyFromSymbol(code, kCode, sizeof(code));
    if (e != cudaSuccess) return e;
    for (int t = 0; t < 2; ++t)
      for (int i = 0; i < 15; ++i) b[t][i] = (code[t][order[t][i]] + code[t][order[t][i + 1]]) / 2.0f;
    return cudaMemcpyToSymbol(kBounds, b, sizeof(b));
  }();
  return done;
}

}  // namespace

cudaError_t quantize_4bit(const void* x, InDType in, int64_t n, int block, int type, uint8_t* packed,
                          float* absmax, cudaStream_t stream) {
  if (cudaError_t e = init_bounds(); e != cudaSuccess) return e;
  if (n == 0) return cudaSuccess;
  const int64_t nb = (n + block - 1) / block;
  const int threads = 256;
  const unsigned grid = static_cast<unsigned>((nb * 32 + threads - 1) / threads);
  switch (in) {
    case kF32: quantize_4bit_kernel<<<grid, threads, 0, stream>>>(static_cast<const float*>(x), n, block, type, packed, absmax); break;
    case kF16: quantize_4bit_kernel<<<grid, threads, 0, stream>>>(static_cast<const __half*>(x), n, block, type, packed, absmax); break;
    case kBF16: quantize_4bit_kernel<<<grid, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), n, block, type, packed, absmax); break;
  }
  return cudaGetLastError();
}

cudaError_t dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int block, int type, void* out,
                            InDType out_dtype, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const unsigned grid = static_cast<unsigned>(((n + 15) / 16 + threads - 1) / threads);
  switch (out_dtype) {
    case kF32: dequantize_4bit_kernel<<<grid, threads, 0, stream>>>(packed, absmax, n, block, type, static_cast<float*>(out)); break;
    case kF16: dequantize_4bit_kernel<<<grid, threads, 0, stream>>>(packed, absmax, n, block, type, static_cast<__half*>(out)); break;
    case kBF16: dequantize_4bit_kernel<<<grid, threads, 0, stream>>>(packed, absmax, n, block, type, static_cast<__nv_bfloat16*>(out)); break;
  }
  return cudaGetLastError();
}

cudaError_t gemv_4bit(const uint8_t* packed, const float* absmax, const uint8_t* qabs, const float* absmax2,
                      float offset, const float* code2, int64_t rows, int64_t cols, int block, int type,
                      const void* x, void* y, InDType io, int64_t batch, cudaStream_t stream) {
  if (cols % 32 || cols % block) return cudaErrorInvalidValue;
  if (rows == 0 || batch == 0) return cudaSuccess;
  const size_t smem = (16 * 32 + (cols <= kMaxSmemCols ? cols : 0)) * sizeof(float);
  const dim3 grid(static_cast<unsigned>((rows + kWarps * kRowsPerWarp - 1) / (kWarps * kRowsPerWarp)),
                  static_cast<unsigned>(batch));
  const int threads = kWarps * 32;
  switch (io) {
    case kF32: gemv_4bit_kernel<<<grid, threads, smem, stream>>>(packed, absmax, qabs, absmax2, offset, code2, rows, cols, block, type, static_cast<const float*>(x), static_cast<float*>(y)); break;
    case kF16: gemv_4bit_kernel<<<grid, threads, smem, stream>>>(packed, absmax, qabs, absmax2, offset, code2, rows, cols, block, type, static_cast<const __half*>(x), static_cast<__half*>(y)); break;
    case kBF16: gemv_4bit_kernel<<<grid, threads, smem, stream>>>(packed, absmax, qabs, absmax2, offset, code2, rows, cols, block, type, static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y)); break;
  }
  return cudaGetLastError();
}

}  // namespace qinterp::cuda
