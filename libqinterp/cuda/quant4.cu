// CUDA twins of reference.cpp's 4-bit functions. Float arithmetic is spelled with the _rn
// intrinsics where the CPU does separate roundings, so that nvcc cannot fuse them into an FMA and
// the bytes stay identical to the CPU's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <mutex>

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

// Each thread decodes 4 bytes into 8 values (one 16-byte store for 16-bit outputs), so a warp
// reads 128 contiguous bytes and writes 512 (or 1024) contiguous bytes. 8 values never straddle a
// block (block >= 32). The 16-entry table sits in one bank each: lookups never conflict.
template <class T>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                       int64_t n, int block, int type, T* __restrict__ out) {
  const int lb = __ffs(block) - 1;  // block is a power of two: shift, not a 64-bit division
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kCode[type][threadIdx.x];
  __syncthreads();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i0 = t * 8;
  if (i0 >= n) return;
  const float a = __ldg(absmax + (i0 >> lb));
  if (i0 + 8 <= n) {
    const unsigned w = __ldcs(reinterpret_cast<const unsigned*>(packed) + t);
    alignas(16) T v[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const unsigned byte = (w >> (8 * j)) & 0xff;
      v[2 * j] = store_cast<T>(code[byte >> 4] * a);
      v[2 * j + 1] = store_cast<T>(code[byte & 15] * a);
    }
#pragma unroll
    for (int j = 0; j < 8; j += 16 / sizeof(T)) __stcs(reinterpret_cast<uint4*>(out + i0 + j), *reinterpret_cast<uint4*>(v + j));
  } else {
    for (int64_t i = i0; i < n; ++i) {
      const unsigned byte = packed[i / 2];
      out[i] = store_cast<T>(code[(i & 1) ? (byte & 15) : (byte >> 4)] * a);
    }
  }
}

// fp16 GEMV: one warp per row. A lane reads 16-byte chunks of the row (32 weights, lanes
// consecutive: 512 coalesced bytes per warp load) and keeps the next batch in flight while it
// decodes the current one. x is staged once per block in shared memory as fp16, each 32-value
// chunk padded to 80 bytes so that the 8 lanes of a quarter-warp hit disjoint banks. A byte
// decodes to a half2 (its two codes) through a 256-entry table replicated per lane (no bank
// conflicts). Products are summed per byte pair in half2, per chunk (one absmax) in float32.
constexpr int kWarps2 = 16, kMaxCols2 = 16384, kPad = 40;  // halves per staged 32-value chunk
// Programmatic dependent launch (sm_90+). Both instructions are no-ops when the launch did not
// ask for it, and they compile to nothing for older architectures.
// allow_next_kernel: the next kernel in the stream, if launched with programmatic serialization,
// may start its own prologue as soon as every block of this one has passed this point.
__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// wait_previous_kernel: blocks until the previous kernel in the stream has finished and its
// writes are visible. Everything before it must not touch memory that kernel writes or reads.
__device__ __forceinline__ void wait_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Shared prologue of the fp16 GEMV kernels: the byte -> half2 code table replicated per lane,
// and x as fp16 in 32-value chunks padded to kPad halves. Ends with a barrier. The weights and
// the table do not depend on the previous kernel, x may be its output: under programmatic
// launch, the wait sits between the two (and before any write of y, which comes later).
__device__ __forceinline__ void stage_table_and_x(__half2* lut, __half* xs, const __half* xb, int64_t cols,
                                                  int type) {
  allow_next_kernel();
  for (int i = threadIdx.x; i < 256 * 32; i += blockDim.x) {
    const int byte = i >> 5;
    lut[i] = __floats2half2_rn(kCode[type][byte >> 4], kCode[type][byte & 15]);
  }
  wait_previous_kernel();
  for (int64_t i = threadIdx.x * 8; i < cols; i += blockDim.x * 8)
    *reinterpret_cast<uint4*>(xs + (i >> 5) * kPad + (i & 31)) = *reinterpret_cast<const uint4*>(xb + i);
  __syncthreads();
}

// Σ code(w_k) x_k over one 16-byte chunk (32 weights): each byte's two codes come from the
// lane's copy of the table as a half2, products are summed per 4-byte word in half2 and then in
// float32 (the caller scales by the chunk's absmax).
__device__ __forceinline__ float chunk_dot(const __half2* lut_l, const uint4& w, const uint4 (&xv)[4]) {
  const unsigned wq[4] = {w.x, w.y, w.z, w.w};
  float part = 0.0f;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const __half2* xh = reinterpret_cast<const __half2*>(&xv[q]);
    __half2 sum = __hmul2(lut_l[(wq[q] & 0xff) << 5], xh[0]);
    sum = __hfma2(lut_l[((wq[q] >> 8) & 0xff) << 5], xh[1], sum);
    sum = __hfma2(lut_l[((wq[q] >> 16) & 0xff) << 5], xh[2], sum);
    sum = __hfma2(lut_l[(wq[q] >> 24) << 5], xh[3], sum);
    const float2 f = __half22float2(sum);
    part += f.x + f.y;
  }
  return part;
}

// One lane's 16-byte chunk c of a row and that chunk's absmax (both zero past the end), issued
// together so that neither load waits behind the other.
__device__ __forceinline__ void load_chunk(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                           int64_t rows, int64_t cols, int64_t bpr, int lb, int64_t row, int64_t c,
                                           uint4& w, float& a) {
  const bool ok = row < rows && c < cols / 32;
  w = ok ? __ldcs(reinterpret_cast<const uint4*>(packed + row * (cols / 2)) + c) : make_uint4(0, 0, 0, 0);
  a = ok && absmax ? __ldg(absmax + row * bpr + ((c * 32) >> lb)) : 0.0f;
}

__global__ void __launch_bounds__(kWarps2 * 32) gemv_4bit_f16_pair_kernel(
    const uint8_t* __restrict__ packed, const float* __restrict__ absmax, const uint8_t* __restrict__ qabs,
    const float* __restrict__ absmax2, float offset, const float* __restrict__ code2, int64_t rows, int64_t cols,
    int block, int type, const __half* __restrict__ x, __half* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem2[];
  __half2* lut = reinterpret_cast<__half2*>(smem2);              // [256][32]
  __half* xs = reinterpret_cast<__half*>(smem2 + 256 * 32 * 4);  // [cols / 32][kPad]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bidx = blockIdx.y;
  const int64_t chunks = cols / 32, bpr = cols / block;
  // Two rows per warp: a lane decodes the same chunk of both rows, so each x load serves twice.
  const int64_t pairs = (rows + 1) / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps2;
  int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarps2 + warp;
  const int lb = __ffs(block) - 1;
  uint4 cur[2], nxt[2];
  float acur[2], anxt[2];  // the chunks' absmax, fetched with the weights (not behind them)
  auto load_pair = [&](uint4* dst, float* ad, int64_t p, int64_t c) {
#pragma unroll
    for (int r = 0; r < 2; ++r) load_chunk(packed, absmax, rows, cols, bpr, lb, 2 * p + r, c, dst[r], ad[r]);
  };
  load_pair(cur, acur, pair, lane);  // first weights in flight while the table and x are staged
  stage_table_and_x(lut, xs, x + bidx * cols, cols, type);
  const __half2* lut_l = lut + lane;
  for (; pair < pairs; pair += stride) {
    float acc[2] = {0.0f, 0.0f};
    for (int64_t c = lane; c < chunks; c += 32) {
      // keep the next chunk in flight while this one is decoded, across the end of the rows too
      if (c + 32 < chunks) load_pair(nxt, anxt, pair, c + 32);
      else load_pair(nxt, anxt, pair + stride, lane);
      const __half* xc = xs + c * kPad;
      uint4 xv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) xv[q] = *reinterpret_cast<const uint4*>(xc + 8 * q);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t b = (2 * pair + r) * bpr + ((c * 32) >> lb);
        const float a = absmax ? acur[r]
                        : (2 * pair + r >= rows) ? 0.0f
                                                 : __fadd_rn(__fmul_rn(code2[qabs[b]], absmax2[b >> 8]), offset);
        acc[r] = fmaf(chunk_dot(lut_l, cur[r], xv), a, acc[r]);
      }
      cur[0] = nxt[0];
      cur[1] = nxt[1];
      acur[0] = anxt[0];
      acur[1] = anxt[1];
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float v = acc[r];
#pragma unroll
      for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && 2 * pair + r < rows) y[bidx * rows + 2 * pair + r] = __float2half_rn(v);
    }
  }
}

// The same with one row per warp: better when there are too few rows to give every resident
// warp a pair (e.g. 4096 rows: 2.58x vs 2.28x cuBLAS on an H100; 11008 rows: 2.43x vs 2.49x).
__global__ void __launch_bounds__(kWarps2 * 32) gemv_4bit_f16_row_kernel(
    const uint8_t* __restrict__ packed, const float* __restrict__ absmax, const uint8_t* __restrict__ qabs,
    const float* __restrict__ absmax2, float offset, const float* __restrict__ code2, int64_t rows, int64_t cols,
    int block, int type, const __half* __restrict__ x, __half* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem2[];
  __half2* lut = reinterpret_cast<__half2*>(smem2);              // [256][32]
  __half* xs = reinterpret_cast<__half*>(smem2 + 256 * 32 * 4);  // [cols / 32][kPad]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bidx = blockIdx.y;
  const int64_t chunks = cols / 32, bpr = cols / block;
  constexpr int kU = 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps2;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps2 + warp;
  const int lb = __ffs(block) - 1;
  uint4 cur[kU], nxt[kU];
  float acur[kU], anxt[kU];  // the chunks' absmax, fetched with the weights (not behind them)
  auto load_batch = [&](uint4* dst, float* ad, int64_t r, int64_t c0) {
#pragma unroll
    for (int u = 0; u < kU; ++u) load_chunk(packed, absmax, rows, cols, bpr, lb, r, c0 + 32 * u, dst[u], ad[u]);
  };
  load_batch(cur, acur, row, lane);  // first weights in flight while the table and x are staged
  stage_table_and_x(lut, xs, x + bidx * cols, cols, type);
  const __half2* lut_l = lut + lane;
  if (row >= rows) return;
  for (; row < rows; row += stride) {
    const int64_t b0 = row * bpr;
    float acc = 0.0f;
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kU) {
      // keep the next batch in flight while this one is decoded, across the end of the row too
      if (c0 + 32 * kU < chunks) load_batch(nxt, anxt, row, c0 + 32 * kU);
      else load_batch(nxt, anxt, row + stride, lane);
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t c = c0 + 32 * u;
        if (c < chunks) {
          const int64_t b = b0 + ((c * 32) >> lb);
          const float a =
              absmax ? acur[u] : __fadd_rn(__fmul_rn(code2[qabs[b]], absmax2[b >> 8]), offset);
          const __half* xc = xs + c * kPad;
          uint4 xv[4];
#pragma unroll
          for (int q = 0; q < 4; ++q) xv[q] = *reinterpret_cast<const uint4*>(xc + 8 * q);
          acc = fmaf(chunk_dot(lut_l, cur[u], xv), a, acc);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) cur[u] = nxt[u], acur[u] = anxt[u];
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[bidx * rows + row] = __float2half_rn(acc);
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
    const int64_t kb = (c * 32) >> (__ffs(block) - 1);
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

std::atomic<bool> g_programmatic_launch{false};

// What belongs to one device: its __constant__ kBounds, the kernels' shared-memory opt-in, its SM
// count and the occupancy answers. Kept per device (the current one at the call, which the glue
// sets to the tensors' device), so that a second GPU never runs with the first one's setup.
struct DeviceSetup {
  bool bounds = false, gemv = false;
  int sms = 0, major = 0;
  size_t smem = 0;          // the staged width the occupancy answers below are for
  int per_sm[2] = {1, 1};  // resident blocks per SM of the row and pair kernels
};
constexpr int kMaxDevices = 64;
std::mutex g_setup_mutex;  // guards g_setup; held only for the setup, not for launches
DeviceSetup g_setup[kMaxDevices];

cudaError_t current_setup(DeviceSetup*& out, int& device) {
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  out = &g_setup[device];
  return cudaSuccess;
}

// kBounds on the current device, once (the caller holds g_setup_mutex).
cudaError_t init_bounds(DeviceSetup& dev) {
  if (dev.bounds) return cudaSuccess;
  float b[2][15];
  const unsigned char order[2][16] = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                      {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3}};
  float code[2][16];
  if (cudaError_t e = cudaMemcpyFromSymbol(code, kCode, sizeof(code)); e != cudaSuccess) return e;
  for (int t = 0; t < 2; ++t)
    for (int i = 0; i < 15; ++i) b[t][i] = (code[t][order[t][i]] + code[t][order[t][i + 1]]) / 2.0f;
  if (cudaError_t e = cudaMemcpyToSymbol(kBounds, b, sizeof(b)); e != cudaSuccess) return e;
  dev.bounds = true;
  return cudaSuccess;
}

}  // namespace

cudaError_t quantize_4bit(const void* x, InDType in, int64_t n, int block, int type, uint8_t* packed,
                          float* absmax, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_setup_mutex);
    DeviceSetup* dev = nullptr;
    int device = 0;
    if (cudaError_t e = current_setup(dev, device); e != cudaSuccess) return e;
    if (cudaError_t e = init_bounds(*dev); e != cudaSuccess) return e;
  }
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
  const unsigned grid = static_cast<unsigned>(((n + 7) / 8 + threads - 1) / threads);
  switch (out_dtype) {
    case kF32: dequantize_4bit_kernel<<<grid, threads, 0, stream>>>(packed, absmax, n, block, type, static_cast<float*>(out)); break;
    case kF16: dequantize_4bit_kernel<<<grid, threads, 0, stream>>>(packed, absmax, n, block, type, static_cast<__half*>(out)); break;
    case kBF16: dequantize_4bit_kernel<<<grid, threads, 0, stream>>>(packed, absmax, n, block, type, static_cast<__nv_bfloat16*>(out)); break;
  }
  return cudaGetLastError();
}

void set_gemv_programmatic_launch(bool on) { g_programmatic_launch.store(on, std::memory_order_relaxed); }

cudaError_t gemv_4bit(const uint8_t* packed, const float* absmax, const uint8_t* qabs, const float* absmax2,
                      float offset, const float* code2, int64_t rows, int64_t cols, int block, int type,
                      const void* x, void* y, InDType io, int64_t batch, cudaStream_t stream) {
  if (cols % 32 || cols % block) return cudaErrorInvalidValue;
  if (rows == 0 || batch == 0) return cudaSuccess;
  if (io == kF16 && cols <= kMaxCols2 && cols % 32 == 0) {
    const size_t smem2 = 256 * 32 * 4 + (cols / 32) * kPad * sizeof(__half);
    int sms = 0, major = 0, r0 = 1, r1 = 1;
    {
      std::lock_guard<std::mutex> lock(g_setup_mutex);
      DeviceSetup* dev = nullptr;
      int device = 0;
      if (cudaError_t e = current_setup(dev, device); e != cudaSuccess) return e;
      if (!dev->gemv) {
        if (cudaDeviceGetAttribute(&dev->major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
          dev->major = 0;
        const size_t most = 256 * 32 * 4 + (kMaxCols2 / 32) * kPad * 2;  // opt in beyond 48 KiB
        for (auto k : {gemv_4bit_f16_row_kernel, gemv_4bit_f16_pair_kernel}) {
          cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most));
          if (e != cudaSuccess) return e;
        }
        if (cudaDeviceGetAttribute(&dev->sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) dev->sms = 132;
        dev->gemv = true;
      }
      if (dev->smem != smem2) {  // the occupancy answer depends on the staged x: ask once per width
        int& a = dev->per_sm[0];
        int& b = dev->per_sm[1];
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&a, gemv_4bit_f16_row_kernel, kWarps2 * 32, smem2) != cudaSuccess || a < 1) a = 1;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, gemv_4bit_f16_pair_kernel, kWarps2 * 32, smem2) != cudaSuccess || b < 1) b = 1;
        dev->smem = smem2;
      }
      sms = dev->sms;
      major = dev->major;
      r0 = dev->per_sm[0];
      r1 = dev->per_sm[1];
    }
    // Pairs when every resident warp gets at least one pair, single rows otherwise.
    const bool pairs = rows >= 2 * static_cast<int64_t>(sms) * r1 * kWarps2;
    const int64_t units = pairs ? (rows + 1) / 2 : rows;
    const int64_t groups = (units + kWarps2 - 1) / kWarps2;
    const int64_t resident = static_cast<int64_t>(sms) * (pairs ? r1 : r0);
    const dim3 grid2(static_cast<unsigned>(std::min(groups, std::max<int64_t>(resident / batch, 1))),
                     static_cast<unsigned>(batch));
    auto kernel = pairs ? gemv_4bit_f16_pair_kernel : gemv_4bit_f16_row_kernel;
    const __half* xh = static_cast<const __half*>(x);
    __half* yh = static_cast<__half*>(y);
    if (g_programmatic_launch.load(std::memory_order_relaxed) && major >= 9) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = grid2;
      cfg.blockDim = dim3(kWarps2 * 32);
      cfg.dynamicSmemBytes = smem2;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      return cudaLaunchKernelEx(&cfg, kernel, packed, absmax, qabs, absmax2, offset, code2, rows, cols, block, type,
                                xh, yh);
    }
    kernel<<<grid2, kWarps2 * 32, smem2, stream>>>(packed, absmax, qabs, absmax2, offset, code2, rows, cols, block,
                                                  type, xh, yh);
    return cudaGetLastError();
  }
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
