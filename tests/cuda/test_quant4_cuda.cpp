// The 4-bit CUDA kernels (libqinterp/cuda/quant4.cu) against their CPU twins in reference.hpp,
// on raw device memory. Runs wherever a GPU is present; skips (and says so) elsewhere.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "qinterp/quant/reference.hpp"
#include "quant4.cuh"

using namespace qinterp;
using quant::ref::FourBit;

namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

template <class T>
struct Dev {  // a device buffer, freed at scope exit
  T* p = nullptr;
  explicit Dev(size_t n) { EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  void put(const std::vector<T>& v) { ASSERT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<T> get(size_t n) const {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

std::vector<float> randn(int64_t n, uint32_t seed, float scale = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Rounds x through the input dtype, as the kernel will see it.
std::vector<float> through(const std::vector<float>& x, cuda::InDType t) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    r[i] = t == cuda::kF16 ? static_cast<float>(c10::Half(x[i])) : t == cuda::kBF16 ? static_cast<float>(c10::BFloat16(x[i])) : x[i];
  return r;
}

template <class T>
std::vector<T> cast(const std::vector<float>& x) {
  std::vector<T> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = static_cast<T>(x[i]);
  return r;
}

template <class T>
void quantize_case(cuda::InDType in, int64_t n, int block, FourBit type) {
  std::vector<float> x = through(randn(n, static_cast<uint32_t>(n * 7 + block)), in);
  for (int64_t i = 0; i < std::min<int64_t>(block, n); ++i) x[i] = 0.0f;  // an all-zero block
  const int64_t nb = (n + block - 1) / block;
  std::vector<uint8_t> ref_p((n + 1) / 2);
  std::vector<float> ref_a(nb);
  quant::ref::quantize_4bit(x.data(), n, block, type, ref_p.data(), ref_a.data());
  Dev<T> dx(n);
  dx.put(cast<T>(x));
  Dev<uint8_t> dp((n + 1) / 2);
  Dev<float> da(nb);
  ASSERT_EQ(cuda::quantize_4bit(dx.p, in, n, block, static_cast<int>(type), dp.p, da.p, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(dp.get(ref_p.size()), ref_p) << "packed bytes, n=" << n << " block=" << block << " in=" << in;
  const auto got_a = da.get(nb);
  EXPECT_EQ(std::memcmp(got_a.data(), ref_a.data(), nb * sizeof(float)), 0) << "absmax";
}

}  // namespace

TEST(CudaQuant4, QuantizeMatchesCpuReferenceByteForByte) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device here; this test runs on a GPU machine";
  for (FourBit t : {FourBit::NF4, FourBit::FP4})
    for (int block : {32, 64, 128, 4096})
      for (int64_t n : {int64_t(1), int64_t(63), int64_t(4096 * 3 + 77), int64_t(200000)}) {
        quantize_case<float>(cuda::kF32, n, block, t);
        quantize_case<c10::Half>(cuda::kF16, n, block, t);
        quantize_case<c10::BFloat16>(cuda::kBF16, n, block, t);
      }
}

TEST(CudaQuant4, DequantizeMatchesCpuReference) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device here; this test runs on a GPU machine";
  for (FourBit t : {FourBit::NF4, FourBit::FP4})
    for (int block : {32, 64, 4096})
      for (int64_t n : {int64_t(5), int64_t(64 * 1000 + 17), int64_t(1 << 20)}) {
        const std::vector<float> x = randn(n, 3);
        const int64_t nb = (n + block - 1) / block;
        std::vector<uint8_t> p((n + 1) / 2);
        std::vector<float> a(nb), ref(n);
        quant::ref::quantize_4bit(x.data(), n, block, t, p.data(), a.data());
        quant::ref::dequantize_4bit(p.data(), a.data(), n, block, t, ref.data());
        Dev<uint8_t> dp(p.size());
        dp.put(p);
        Dev<float> da(nb);
        da.put(a);
        Dev<float> o32(n);
        Dev<c10::Half> o16(n);
        Dev<c10::BFloat16> ob(n);
        ASSERT_EQ(cuda::dequantize_4bit(dp.p, da.p, n, block, static_cast<int>(t), o32.p, cuda::kF32, nullptr), cudaSuccess);
        ASSERT_EQ(cuda::dequantize_4bit(dp.p, da.p, n, block, static_cast<int>(t), o16.p, cuda::kF16, nullptr), cudaSuccess);
        ASSERT_EQ(cuda::dequantize_4bit(dp.p, da.p, n, block, static_cast<int>(t), ob.p, cuda::kBF16, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const auto g32 = o32.get(n);
        const auto g16 = o16.get(n);
        const auto gb = ob.get(n);
        EXPECT_EQ(std::memcmp(g32.data(), ref.data(), n * sizeof(float)), 0) << "float32, n=" << n;
        int64_t bad16 = 0, badb = 0;
        for (int64_t i = 0; i < n; ++i) {
          bad16 += c10::Half(ref[i]).x != g16[i].x;
          badb += c10::BFloat16(ref[i]).x != gb[i].x;
        }
        EXPECT_EQ(bad16, 0) << "float16 outputs differing from the rounded reference";
        EXPECT_EQ(badb, 0) << "bfloat16 outputs differing from the rounded reference";
      }
}

TEST(CudaQuant4, GemvMatchesCpuReference) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device here; this test runs on a GPU machine";
  struct Case { int64_t rows, cols; int block; bool dq; };
  for (const Case c : {Case{37, 64, 64, false}, Case{300, 4096, 64, true}, Case{129, 11264, 128, false},
                       Case{64, 14336, 64, true},
                       // enough rows (on an H100) for the kernel that gives each warp two rows
                       Case{9001, 256, 64, true}}) {
    const int64_t n = c.rows * c.cols, nb = n / c.block;
    const std::vector<float> w = randn(n, 5), x = randn(c.cols, 6, 1.0f);
    std::vector<uint8_t> p(n / 2);
    std::vector<float> a(nb);
    quant::ref::quantize_4bit(w.data(), n, c.block, FourBit::NF4, p.data(), a.data());
    // Double quantization: 8-bit absmax codes around an offset, as quantize() stores them.
    std::vector<uint8_t> qa(nb);
    std::vector<float> a2((nb + 255) / 256), code(256);
    for (int i = 0; i < 256; ++i) code[i] = -1.0f + 2.0f * i / 255.0f;
    float offset = 0;
    for (float v : a) offset += v / nb;
    std::vector<float> centred(nb);
    for (int64_t i = 0; i < nb; ++i) centred[i] = a[i] - offset;
    quant::ref::quantize_blockwise8(centred.data(), nb, 256, code.data(), qa.data(), a2.data());
    std::vector<float> a_used(nb);
    if (c.dq) quant::ref::dequantize_absmax(qa.data(), a2.data(), offset, code.data(), nb, a_used.data());
    else a_used = a;
    std::vector<float> ref(c.rows);
    quant::ref::gemv_4bit(p.data(), a_used.data(), c.rows, c.cols, c.block, FourBit::NF4, x.data(), ref.data());
    Dev<uint8_t> dp(p.size()), dqa(nb);
    dp.put(p);
    dqa.put(qa);
    Dev<float> da(nb), da2(a2.size()), dcode(256), dx(c.cols), dy(c.rows);
    da.put(a);
    da2.put(a2);
    dcode.put(code);
    dx.put(x);
    ASSERT_EQ(cuda::gemv_4bit(dp.p, c.dq ? nullptr : da.p, c.dq ? dqa.p : nullptr, da2.p, offset, dcode.p, c.rows,
                              c.cols, c.block, 0, dx.p, dy.p, cuda::kF32, 1, nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto y = dy.get(c.rows);
    double num = 0, den = 0;
    for (int64_t r = 0; r < c.rows; ++r) {
      num += (y[r] - ref[r]) * double(y[r] - ref[r]);
      den += double(ref[r]) * ref[r];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << c.rows << "x" << c.cols << " dq=" << c.dq;
    // fp16 input and output: rounding of x and y only
    // fp16 input and output, a batch of two rows (the second is x scaled by -2): the fp16 kernel
    // sums each 8-weight word in half precision, hence the looser bound
    std::vector<c10::Half> xh(2 * c.cols);
    std::vector<float> xr(c.cols), xr2(c.cols), ref2(c.rows);
    for (int64_t k = 0; k < c.cols; ++k) {
      xh[k] = c10::Half(x[k]), xr[k] = static_cast<float>(xh[k]);
      xh[c.cols + k] = c10::Half(-2.0f * x[k]), xr2[k] = static_cast<float>(xh[c.cols + k]);
    }
    quant::ref::gemv_4bit(p.data(), a_used.data(), c.rows, c.cols, c.block, FourBit::NF4, xr.data(), ref.data());
    quant::ref::gemv_4bit(p.data(), a_used.data(), c.rows, c.cols, c.block, FourBit::NF4, xr2.data(), ref2.data());
    Dev<c10::Half> dxh(2 * c.cols), dyh(2 * c.rows);
    dxh.put(xh);
    ASSERT_EQ(cuda::gemv_4bit(dp.p, c.dq ? nullptr : da.p, c.dq ? dqa.p : nullptr, da2.p, offset, dcode.p, c.rows,
                              c.cols, c.block, 0, dxh.p, dyh.p, cuda::kF16, 2, nullptr),
              cudaSuccess);
    const auto yh = dyh.get(2 * c.rows);
    for (int b = 0; b < 2; ++b) {
      const std::vector<float>& rr = b ? ref2 : ref;
      num = den = 0;
      for (int64_t r = 0; r < c.rows; ++r) {
        const double d = static_cast<float>(yh[b * c.rows + r]) - rr[r];
        num += d * d;
        den += double(rr[r]) * rr[r];
      }
      EXPECT_LT(std::sqrt(num / den), 3e-3) << "fp16 " << c.rows << "x" << c.cols << " row " << b;
    }
  }
}

// Programmatic dependent launch: a chain of fp16 GEMVs where each output is the next input (two
// buffers in turn, so each kernel also overwrites what the one before it read). With the
// overlap on, every step must wait for the previous one before it reads x or writes y; a
// missing or misplaced wait shows up as different bits from the serialized chain. Both kernels
// (one row and two rows per warp) are covered by the two shapes.
TEST(CudaQuant4, GemvProgrammaticLaunchChainMatchesSerialized) {
  if (!have_gpu()) GTEST_SKIP() << "SKIPPED: no CUDA device here; this test runs on a GPU machine";
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  if (major < 9) std::printf("note: compute capability %d: the launch falls back to plain stream order\n", major);
  for (const int64_t n : {int64_t(1024), int64_t(12288)}) {
    const int block = 64;
    const int64_t nb = n * n / block;
    // W with unit-scale rows (entries ~ N(0, 1/n)) keeps the chain's values in fp16 range.
    const std::vector<float> w = randn(n * n, 11, 1.0f / std::sqrt(static_cast<float>(n)));
    std::vector<uint8_t> p(n * n / 2);
    std::vector<float> a(nb);
    quant::ref::quantize_4bit(w.data(), n * n, block, FourBit::NF4, p.data(), a.data());
    Dev<uint8_t> dp(p.size());
    dp.put(p);
    Dev<float> da(nb);
    da.put(a);
    const std::vector<c10::Half> x0 = cast<c10::Half>(randn(n, 12, 1.0f));
    constexpr int kSteps = 12;
    auto chain = [&](bool overlap) {
      cuda::set_gemv_programmatic_launch(overlap);
      Dev<c10::Half> b0(n), b1(n);
      b0.put(x0);
      c10::Half* buf[2] = {b0.p, b1.p};
      for (int s = 0; s < kSteps; ++s)
        EXPECT_EQ(cuda::gemv_4bit(dp.p, da.p, nullptr, nullptr, 0.0f, nullptr, n, n, block, 0, buf[s % 2],
                                  buf[(s + 1) % 2], cuda::kF16, 1, nullptr),
                  cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      cuda::set_gemv_programmatic_launch(false);
      return (kSteps % 2 ? b1 : b0).get(n);
    };
    const auto serial = chain(false), overlapped = chain(true);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += serial[i].x != overlapped[i].x;
    EXPECT_EQ(differ, 0) << n << "x" << n << ": outputs of the overlapped chain differing from the serialized one";
    // and the chain computes what it should: its first step against the CPU reference
    std::vector<float> xr(n), ref(n);
    for (int64_t k = 0; k < n; ++k) xr[k] = static_cast<float>(x0[k]);
    quant::ref::gemv_4bit(p.data(), a.data(), n, n, block, FourBit::NF4, xr.data(), ref.data());
    cuda::set_gemv_programmatic_launch(true);
    Dev<c10::Half> dx(n), dy(n);
    dx.put(x0);
    ASSERT_EQ(cuda::gemv_4bit(dp.p, da.p, nullptr, nullptr, 0.0f, nullptr, n, n, block, 0, dx.p, dy.p, cuda::kF16,
                              1, nullptr),
              cudaSuccess);
    cuda::set_gemv_programmatic_launch(false);
    const auto y = dy.get(n);
    double num = 0, den = 0;
    for (int64_t r = 0; r < n; ++r) {
      const double d = static_cast<float>(y[r]) - ref[r];
      num += d * d;
      den += double(ref[r]) * ref[r];
    }
    EXPECT_LT(std::sqrt(num / den), 3e-3) << n << "x" << n;
    double absmax_out = 0;
    for (const auto& v : serial) absmax_out = std::max(absmax_out, std::fabs(static_cast<double>(static_cast<float>(v))));
    EXPECT_TRUE(absmax_out > 1e-3 && absmax_out < 6e4) << "chain output out of a useful range: " << absmax_out;
  }
}
