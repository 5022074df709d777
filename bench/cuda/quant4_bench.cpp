// GPU benchmark of the 4-bit kernels against the device's own ceilings, in one run:
//   dequantize (NF4 -> fp16) vs a device-to-device copy (bytes read + written per second);
//   fused NF4 GEMV vs cuBLAS fp16 GEMV (cublasGemmEx, n = 1) on 4096x11008 and 11008x4096, the
//   GEMV launched plainly and with programmatic dependent launch ("pdl").
// Weights rotate over several buffers larger than L2 together, so the numbers are DRAM numbers.
// Usage: quant4_bench [iterations]   (prints a table; see docs/performance.md)
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "quant4.cuh"

namespace {

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define CB(x)                                                                       \
  do {                                                                              \
    cublasStatus_t s_ = (x);                                                        \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                              \
      std::fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, (int)s_); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

// Median over `iters` timings of `per` back-to-back calls (rotating inputs), per call: a decoder
// launches these kernels back to back, so launch gaps, not host round trips, are what count.
template <class F>
float median_ms(int iters, F&& f, int per = 1) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 5; ++i) f(i);
  CK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(a));
    for (int k = 0; k < per; ++k) f(i * per + k);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / per);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void fill_random(void* p, size_t bytes, unsigned seed) {
  std::vector<unsigned char> h(bytes);
  std::mt19937 rng(seed);
  for (auto& c : h) c = static_cast<unsigned char>(rng());
  CK(cudaMemcpy(p, h.data(), bytes, cudaMemcpyHostToDevice));
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // Copy ceiling: 1 GiB device to device.
  const size_t big = size_t(1) << 30;
  void *s, *d;
  CK(cudaMalloc((void**)&s, big));
  CK(cudaMalloc((void**)&d, big));
  CK(cudaMemset(s, 1, big));
  const float copy_ms = median_ms(20, [&](int) { CK(cudaMemcpyAsync(d, s, big, cudaMemcpyDeviceToDevice)); }, 4);
  const double copy_gbs = 2.0 * big / (copy_ms * 1e-3) / 1e9;
  CK(cudaFree(s));
  CK(cudaFree(d));
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);

  // Dequantize NF4 -> fp16, 4096 x 11008, block 64, rotating over 8 weights.
  const int64_t rows = 4096, cols = 11008, n = rows * cols, block = 64, nb = n / block;
  const int kW = 8;
  std::vector<uint8_t*> wp(kW);
  std::vector<float*> wa(kW);
  for (int i = 0; i < kW; ++i) {
    CK(cudaMalloc((void**)&wp[i], n / 2));
    fill_random(wp[i], n / 2, 10 + i);
    CK(cudaMalloc((void**)&wa[i], nb * sizeof(float)));
    std::vector<float> a(nb);
    std::mt19937 rng(20 + i);
    for (auto& v : a) v = 0.01f + 0.1f * (rng() % 1000) / 1000.0f;
    CK(cudaMemcpy(wa[i], a.data(), nb * sizeof(float), cudaMemcpyHostToDevice));
  }
  __half* out;
  CK(cudaMalloc((void**)&out, n * sizeof(__half)));
  const float deq_ms = median_ms(iters, [&](int i) {
    CK(qinterp::cuda::dequantize_4bit(wp[i % kW], wa[i % kW], n, block, 0, out, qinterp::cuda::kF16, nullptr));
  }, 20);
  const double deq_bytes = n / 2.0 + nb * 4.0 + n * 2.0;
  const double deq_gbs = deq_bytes / (deq_ms * 1e-3) / 1e9;
  std::printf("dequantize nf4->fp16 %lldx%lld: %.1f us, %.0f GB/s = %.0f%% of copy\n", (long long)rows,
              (long long)cols, deq_ms * 1e3, deq_gbs, 100.0 * deq_gbs / copy_gbs);
  CK(cudaFree(out));

  // GEMV: fused NF4 vs cuBLAS fp16, both shapes.
  cublasHandle_t h;
  CB(cublasCreate(&h));
  std::printf("%-12s %10s %10s %8s %14s %10s %8s\n", "gemv", "nf4 us", "fp16 us", "speedup", "nf4 GB/s", "pdl us",
              "speedup");
  for (const auto& shape : {std::pair<int64_t, int64_t>{4096, 11008}, {11008, 4096}}) {
    const int64_t R = shape.first, C = shape.second, N = R * C;
    __half *x, *y;
    CK(cudaMalloc((void**)&x, C * sizeof(__half)));
    CK(cudaMalloc((void**)&y, R * sizeof(__half)));
    std::vector<__half> xh(C);
    for (int64_t k = 0; k < C; ++k) xh[k] = __float2half(0.01f * ((k * 37) % 200 - 100));
    CK(cudaMemcpy(x, xh.data(), C * sizeof(__half), cudaMemcpyHostToDevice));
    auto run_q = [&](int i) {
      CK(qinterp::cuda::gemv_4bit(wp[i % kW], wa[i % kW], nullptr, nullptr, 0.0f, nullptr, R, C, block, 0, x, y,
                                  qinterp::cuda::kF16, 1, nullptr));
    };
    const float q_ms = median_ms(iters, run_q, 20);
    // the same with programmatic dependent launch (each GEMV's prologue overlaps the previous one)
    qinterp::cuda::set_gemv_programmatic_launch(true);
    const float p_ms = median_ms(iters, run_q, 20);
    qinterp::cuda::set_gemv_programmatic_launch(false);
    const int kH = 3;  // fp16 weights: 3 x 90 MB, beyond L2
    std::vector<__half*> wh(kH);
    for (int i = 0; i < kH; ++i) {
      CK(cudaMalloc((void**)&wh[i], N * sizeof(__half)));
      std::vector<__half> hw(N);
      std::mt19937 rng(30 + i);
      for (auto& v : hw) v = __float2half(0.02f * (int(rng() % 200) - 100) / 100.0f);
      CK(cudaMemcpy(wh[i], hw.data(), N * sizeof(__half), cudaMemcpyHostToDevice));
    }
    const float alpha = 1.0f, beta = 0.0f;
    const float h_ms = median_ms(iters, [&](int i) {
      // y[R] = W[R, C] x: column-major W^T is [C, R], so op(A) = A^T with lda = C.
      CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, 1, (int)C, &alpha, wh[i % kH], CUDA_R_16F, (int)C, x,
                      CUDA_R_16F, (int)C, &beta, y, CUDA_R_16F, (int)R, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }, 20);
    const double q_gbs = (N / 2.0 + N / block * 4.0) / (q_ms * 1e-3) / 1e9;
    std::printf("%5lldx%-6lld %10.1f %10.1f %7.2fx %14.0f %10.1f %7.2fx\n", (long long)R, (long long)C, q_ms * 1e3,
                h_ms * 1e3, h_ms / q_ms, q_gbs, p_ms * 1e3, h_ms / p_ms);
    for (auto p : wh) CK(cudaFree(p));
    CK(cudaFree(x));
    CK(cudaFree(y));
  }
  CB(cublasDestroy(h));
  for (int i = 0; i < kW; ++i) {
    CK(cudaFree(wp[i]));
    CK(cudaFree(wa[i]));
  }
  return 0;
}
