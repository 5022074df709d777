// Each CUDA kernel against its CPU twin, on raw device memory (no torch involved), so this runs
// wherever a GPU is present even when the torch glue is not built.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "gguf_dequant.cuh"
#include "qinterp/quant/gguf_blocks.hpp"

using namespace qinterp;

namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

using Kernel = cudaError_t (*)(const void*, float*, int64_t, cudaStream_t);

void compare(io::GgmlType t, Kernel k, int64_t blocks) {
  int64_t be, bb;
  io::ggml_block_layout(t, &be, &bb);
  std::mt19937 rng(11);
  std::vector<uint8_t> raw(static_cast<size_t>(blocks * bb));
  for (auto& b : raw) b = static_cast<uint8_t>(rng());
  for (int64_t i = 0; i < blocks; ++i) {  // finite fp16 scale (and min): exponent bits kept small
    raw[i * bb + 1] &= 0x3b;
    if (t == io::GgmlType::Q4_1) raw[i * bb + 3] &= 0xbb;
  }
  const int64_t n = blocks * be;
  std::vector<float> ref(n), got(n);
  quant::dequantize_gguf_cpu(t, raw.data(), ref.data(), n);
  void* d_src = nullptr;
  float* d_dst = nullptr;
  ASSERT_EQ(cudaMalloc(&d_src, raw.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_dst), n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_src, raw.data(), raw.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(k(d_src, d_dst, blocks, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got.data(), d_dst, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_src);
  cudaFree(d_dst);
  EXPECT_EQ(std::memcmp(ref.data(), got.data(), n * sizeof(float)), 0) << io::ggml_type_name(t);
}

}  // namespace

TEST(CudaGgufDequant, MatchesCpuReference) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device here; this test runs on a GPU machine";
  for (int64_t blocks : {1, 7, 100003}) {
    compare(io::GgmlType::Q8_0, cuda::dequantize_q8_0, blocks);
    compare(io::GgmlType::Q4_0, cuda::dequantize_q4_0, blocks);
    compare(io::GgmlType::Q4_1, cuda::dequantize_q4_1, blocks);
  }
}
