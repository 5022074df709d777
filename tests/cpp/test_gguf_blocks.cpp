// ggml block decoding on the CPU against hand-checked values. (tests/python compares every type
// with the gguf package's numpy decoders on random blocks.)
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <random>

#include "common.hpp"
#include "qinterp/quant/dequantize.hpp"
#include "qinterp/quant/gguf_blocks.hpp"
#include "qinterp/quant/quantize.hpp"
#include "qinterp/quant/reference.hpp"

using namespace qinterp;

TEST(HalfFloat, ExactConversions) {
  EXPECT_EQ(quant::half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(quant::half_to_float(0xc000), -2.0f);
  EXPECT_EQ(quant::half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(quant::half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(quant::half_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(quant::half_to_float(0x8000), -0.0f);
  EXPECT_TRUE(std::isinf(quant::half_to_float(0x7c00)));
  EXPECT_TRUE(std::isnan(quant::half_to_float(0x7e00)));
  EXPECT_EQ(quant::bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(quant::bf16_to_float(0xc0a0), -5.0f);
  // Every finite half agrees with torch's conversion.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    const float ref = at::scalar_tensor(0, at::kHalf).fill_(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()))
                          .item<float>();
    ASSERT_EQ(quant::half_to_float(static_cast<uint16_t>(h)), ref) << "half bits " << h;
  }
}

TEST(GgufBlocks, Q8_0) {
  std::vector<uint8_t> b(34);
  const uint16_t d = 0x3800;  // 0.5
  std::memcpy(b.data(), &d, 2);
  for (int i = 0; i < 32; ++i) b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i * 8 - 128));
  std::vector<float> y(32);
  quant::dequantize_gguf_cpu(io::GgmlType::Q8_0, b.data(), y.data(), 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], (i * 8 - 128) * 0.5f);
}

// Random GGUF Q8_0 rows as ggml's quantizer writes them: per run an fp16 d and int8 q in
// [-127, 127] with 127 or -127 at the run's largest value.
std::vector<uint8_t> random_q8_0(int64_t rows, int64_t cols, std::mt19937& g) {
  std::vector<uint8_t> raw(static_cast<size_t>(rows * cols / 32 * 34));
  std::uniform_int_distribution<int> qd(-127, 127), pos(0, 31), hd(0x1000, 0x2c00);  // d in [2^-11, 2^-4]
  for (size_t b = 0; b < raw.size() / 34; ++b) {
    const uint16_t d = static_cast<uint16_t>(hd(g));
    std::memcpy(&raw[b * 34], &d, 2);
    for (int i = 0; i < 32; ++i) raw[b * 34 + 2 + i] = static_cast<uint8_t>(static_cast<int8_t>(qd(g)));
    raw[b * 34 + 2 + pos(g)] = static_cast<uint8_t>(static_cast<int8_t>(g() % 2 ? 127 : -127));
  }
  return raw;
}

TEST(Q8Blocks, AGgufQ8_0TensorDecodedToFloat32IsFoundExactlyAndNothingElseIs) {
  std::mt19937 g(11);
  const int64_t rows = 37, cols = 96;
  const std::vector<uint8_t> raw = random_q8_0(rows, cols, g);
  at::Tensor w = at::empty({rows, cols});
  quant::dequantize_gguf_cpu(io::GgmlType::Q8_0, raw.data(), w.data_ptr<float>(), rows * cols);
  const quant::Q8Blocks b = quant::exact_q8_blocks(w);
  ASSERT_TRUE(b.defined());
  EXPECT_EQ(b.bytes(), rows * cols + rows * cols / 32 * 4);
  EXPECT_TRUE(b.fresh_for(w));
  for (int64_t j = 0; j < rows * cols / 32; ++j) {  // the file's own d and q
    uint16_t d;
    std::memcpy(&d, &raw[static_cast<size_t>(j) * 34], 2);
    ASSERT_EQ(b.d.data_ptr<float>()[j], quant::half_to_float(d)) << "run " << j;
    ASSERT_EQ(std::memcmp(b.q.data_ptr<int8_t>() + j * 32, &raw[static_cast<size_t>(j) * 34 + 2], 32), 0) << "run " << j;
  }
  // An in-place write makes the blocks stale for w.
  at::Tensor w2 = w.clone();
  const quant::Q8Blocks b2 = quant::exact_q8_blocks(w2);
  w2.mul_(1.0f);
  EXPECT_FALSE(b2.fresh_for(w2));
  EXPECT_FALSE(b.fresh_for(w2));
  // One value off the grid by one ulp, a NaN, a row length that is not whole runs, another dtype,
  // a random float tensor: no blocks.
  at::Tensor off = w.clone();
  off[5][17] = std::nextafter(off[5][17].item<float>(), 1.0f);
  EXPECT_FALSE(quant::exact_q8_blocks(off).defined());
  at::Tensor nan = w.clone();
  nan[36][95] = NAN;
  EXPECT_FALSE(quant::exact_q8_blocks(nan).defined());
  EXPECT_FALSE(quant::exact_q8_blocks(w.narrow(1, 0, 80).contiguous()).defined());
  EXPECT_FALSE(quant::exact_q8_blocks(w.to(at::kHalf)).defined());
  EXPECT_FALSE(quant::exact_q8_blocks(at::randn({8, 64})).defined());
  // All-zero runs are exact, with d = 0.
  const quant::Q8Blocks z = quant::exact_q8_blocks(at::zeros({2, 64}));
  ASSERT_TRUE(z.defined());
  EXPECT_EQ(z.d.abs().max().item<float>(), 0.0f);
}

TEST(Q8Blocks, KernelEqualsItsReferenceBitForBitAndTheExactProduct) {
  std::mt19937 g(12);
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 32}, {17, 64}, {300, 576}, {1031, 96}}) {
    const std::vector<uint8_t> raw = random_q8_0(rows, cols, g);
    at::Tensor w = at::empty({rows, cols});
    quant::dequantize_gguf_cpu(io::GgmlType::Q8_0, raw.data(), w.data_ptr<float>(), rows * cols);
    const quant::Q8Blocks b = quant::exact_q8_blocks(w);
    ASSERT_TRUE(b.defined());
    for (int64_t nx : {1, 2, 3, 4, 6}) {
      const at::Tensor x = at::randn({nx, cols});
      const at::Tensor y = quant::gemv_q8_blocks(x, b);
      ASSERT_EQ(y.sizes(), at::IntArrayRef({nx, rows}));
      at::Tensor ref = at::empty({nx, rows});
      quant::ref::gemv_q8_blocks(b.q.data_ptr<int8_t>(), b.d.data_ptr<float>(), rows, cols, x.data_ptr<float>(), nx,
                                 ref.data_ptr<float>());
      EXPECT_TRUE(at::equal(y, ref)) << rows << "x" << cols << ", " << nx << " rows: max diff "
                                     << (y - ref).abs().max().item<float>();
      const at::Tensor exact = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
      const at::Tensor bound = at::matmul(x.abs().to(at::kDouble), w.abs().to(at::kDouble).t());
      EXPECT_LT(((y.to(at::kDouble) - exact).abs() / bound).max().item<double>(), 2e-6) << rows << "x" << cols;
    }
  }
  const quant::Q8Blocks b = quant::exact_q8_blocks(at::zeros({4, 64}));
  EXPECT_QERROR(quant::gemv_q8_blocks(at::randn({1, 32}), b), "gemv_q8_blocks", "64 features");
  EXPECT_QERROR(quant::gemv_q8_blocks(at::randn({1, 64}), quant::Q8Blocks{}), "gemv_q8_blocks", "int8");
}

TEST(GgufBlocks, Q4_0AndQ4_1NibbleOrder) {
  // Byte j holds element j in its low nibble and element j+16 in its high nibble.
  std::vector<uint8_t> b0(18), b1(20);
  const uint16_t d = 0x4000, m = 0xbc00;  // 2.0, -1.0
  std::memcpy(b0.data(), &d, 2);
  std::memcpy(b1.data(), &d, 2);
  std::memcpy(b1.data() + 2, &m, 2);
  for (int j = 0; j < 16; ++j) {
    const uint8_t byte = static_cast<uint8_t>((15 - j) << 4 | j);
    b0[2 + j] = byte;
    b1[4 + j] = byte;
  }
  std::vector<float> y0(32), y1(32);
  quant::dequantize_gguf_cpu(io::GgmlType::Q4_0, b0.data(), y0.data(), 32);
  quant::dequantize_gguf_cpu(io::GgmlType::Q4_1, b1.data(), y1.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y0[j], (j - 8) * 2.0f);
    EXPECT_EQ(y0[j + 16], ((15 - j) - 8) * 2.0f);
    EXPECT_EQ(y1[j], j * 2.0f - 1.0f);
    EXPECT_EQ(y1[j + 16], (15 - j) * 2.0f - 1.0f);
  }
}

// The AVX2 k-quant decoders against the scalar ones beside them, bit for bit, on random blocks
// with finite scales (every other byte pattern is a valid block).
TEST(GgufBlocks, VectorisedDecodersEqualTheScalarReference) {
  struct Case {
    io::GgmlType t;
    int bytes;
    std::vector<int> scales;  // offsets of fp16 scales
  };
  const Case cases[] = {{io::GgmlType::Q2_K, 84, {80, 82}}, {io::GgmlType::Q3_K, 110, {108}},
                        {io::GgmlType::Q5_K, 176, {0, 2}}, {io::GgmlType::Q4_K, 144, {0, 2}},
                        {io::GgmlType::Q6_K, 210, {208}}};
  std::mt19937 rng(7);
  for (const Case& c : cases) {
    const int nb = 37;
    std::vector<uint8_t> raw(static_cast<size_t>(nb * c.bytes));
    for (auto& x : raw) x = static_cast<uint8_t>(rng());
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    for (int i = 0; i < nb; ++i)
      for (int off : c.scales) {
        const uint16_t h = c10::Half(u(rng)).x;
        std::memcpy(raw.data() + i * c.bytes + off, &h, 2);
      }
    std::vector<float> fast(static_cast<size_t>(nb) * 256), ref(fast.size());
    quant::dequantize_gguf_cpu(c.t, raw.data(), fast.data(), nb * 256);
    quant::dequantize_gguf_cpu_reference(c.t, raw.data(), ref.data(), nb * 256);
    EXPECT_EQ(std::memcmp(fast.data(), ref.data(), fast.size() * sizeof(float)), 0) << io::ggml_type_name(c.t);
  }
  if (!__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2 on this CPU: only the scalar decoders ran";
}

TEST(GgufBlocks, TensorEntryPointChecksSizes) {
  at::Tensor raw = at::zeros({34}, at::kByte);
  EXPECT_EQ(quant::dequantize_gguf(raw, io::GgmlType::Q8_0, 32).numel(), 32);
  EXPECT_QERROR(quant::dequantize_gguf(raw, io::GgmlType::Q8_0, 64), "34 bytes do not hold 64");
  EXPECT_QERROR(quant::dequantize_gguf(raw.to(at::kFloat), io::GgmlType::Q8_0, 32), "uint8");
  EXPECT_QERROR(quant::dequantize_gguf(raw, io::GgmlType::Q2_K, 256), "34 bytes do not hold 256 elements of Q2_K");
  EXPECT_QERROR(quant::dequantize_gguf(raw, io::GgmlType::Q8_K, 256), "no decoder", "Q8_K");  // llama.cpp-internal
}

TEST(GgufBlocks, CudaTensorsMatchCpu) {
  if (!quant::cuda_built() || !at::hasCUDA()) {
    GTEST_SKIP() << "SKIPPED: no CUDA device here (cuda glue built: " << quant::cuda_built()
                 << "); the CUDA comparison runs on a GPU machine";
  }
  at::manual_seed(7);
  for (auto t : {io::GgmlType::Q8_0, io::GgmlType::Q4_0, io::GgmlType::Q4_1}) {
    int64_t be, bb;
    io::ggml_block_layout(t, &be, &bb);
    const int64_t blocks = 4097;
    at::Tensor raw = at::randint(0, 256, {blocks * bb}, at::kByte);
    for (int64_t i = 0; i < blocks; ++i) {  // finite scales: fp16 0.01 and, for Q4_1, min -0.5
      raw[i * bb] = 0x1f; raw[i * bb + 1] = 0x21;
      if (t == io::GgmlType::Q4_1) { raw[i * bb + 2] = 0x00; raw[i * bb + 3] = 0xb8; }
    }
    at::Tensor cpu = quant::dequantize_gguf(raw, t, blocks * be);
    at::Tensor gpu = quant::dequantize_gguf(raw.cuda(), t, blocks * be).cpu();
    EXPECT_TRUE(at::equal(cpu, gpu)) << io::ggml_type_name(t);
  }
}
