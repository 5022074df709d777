// One test over the table of quantized formats (quant/format.hpp): every row of formats() gets
// the same checks, so a new format is checked by being in the table (and this file fails until
// it names specs for it below):
//   - dequantize() equals an independent decoder written here from quantized_tensor.hpp's layout;
//   - the quantization error stays within the format's bound;
//   - parts() / from_parts() round-trip exactly, and a cut or missing part is an Error naming it;
//   - the layer product (Format::linear, what QLinear uses) equals x · dequant(W)ᵀ + b for a few
//     rows (the fused kernels where the format has them) and for many, with the gradient
//     reaching x as the dequantized weight's;
//   - on a GPU, the same on CUDA against the CPU (skipped, saying so, without one).
#include <ATen/ATen.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <map>

#include "../../libqinterp/src/quant/format_common.hpp"  // RowJob, run_row_jobs (internal)
#include "common.hpp"
#include "qinterp/quant/format.hpp"
#include "qinterp/quant/gptq.hpp"
#include "qinterp/quant/quantize.hpp"
#include "qinterp/quant/reference.hpp"

using namespace qinterp;
using quant::Method;

namespace {

// Specs per format name, each with its bound on ||x - dequant(q(x))|| / ||x|| for Gaussian weights
// (about 1.5 times what each measures, so a real loss of precision fails).
const std::map<std::string, std::vector<std::pair<std::string, double>>> kSpecs = {
    {"nf4", {{"nf4", 0.14}, {"nf4:double_quant=0,block=128", 0.15}}},           // measured 0.091, 0.097
    {"fp4", {{"fp4", 0.18}, {"fp4:double_quant=0,block=32", 0.17}}},            // 0.121, 0.113
    {"int8", {{"int8", 0.0095}}},                                                // 0.0061
    {"rtn", {{"rtn4", 0.16}, {"rtn3:group=32,sym=0", 0.25}, {"rtn8:group=0", 0.0095}, {"rtn2:group=16", 0.65}}},
    // rtn measured 0.108, 0.166, 0.0063, 0.435
    {"gptq", {{"gptq4:group=32", 0.16}, {"gptq3:group=0,act_order=1", 0.37}}},  // 0.105, 0.249
};

std::vector<std::string> all_specs() {
  std::vector<std::string> out;
  for (const auto& [name, specs] : kSpecs)
    for (const auto& s : specs) out.push_back(s.first);
  return out;
}

double bound_of(const std::string& spec) {
  for (const auto& [name, specs] : kSpecs)
    for (const auto& s : specs)
      if (s.first == spec) return s.second;
  return 0;
}

constexpr int64_t kRows = 37, kCols = 70;  // tails everywhere: blocks, groups, odd nibble counts

at::Tensor weight() {
  at::manual_seed(7);
  return at::randn({kRows, kCols});
}

quant::QuantizedTensor make(const at::Tensor& w, const quant::QuantSpec& spec) {
  if (spec.method != Method::GPTQ) return quant::quantize(w, spec);
  at::manual_seed(8);
  const at::Tensor x = at::randn({256, w.size(1)});
  return quant::gptq_quantize(w, at::matmul(x.t(), x) * (2.0 / x.size(0)), spec);
}

// The layout of quantized_tensor.hpp, decoded with plain loops in float32.
at::Tensor layout_decode(const quant::QuantizedTensor& q) {
  const int64_t n = q.numel();
  std::vector<float> out(static_cast<size_t>(n));
  switch (q.spec.method) {
    case Method::NF4:
    case Method::FP4: {
      const float* code = quant::ref::fourbit_code(q.spec.method == Method::NF4 ? quant::ref::FourBit::NF4
                                                                                : quant::ref::FourBit::FP4);
      const at::Tensor d = q.data.cpu().contiguous();
      const uint8_t* p = d.data_ptr<uint8_t>();
      std::vector<float> absmax;
      const int64_t nb = (n + q.spec.block - 1) / q.spec.block;
      if (q.spec.double_quant) {
        const at::Tensor qa = q.absmax.cpu(), a2 = q.absmax2.cpu(), c2 = q.code2.cpu();
        const float off = q.offset.item<float>();
        for (int64_t b = 0; b < nb; ++b)
          absmax.push_back(c2.data_ptr<float>()[qa.data_ptr<uint8_t>()[b]] * a2.data_ptr<float>()[b / 256] + off);
      } else {
        const at::Tensor a = q.absmax.cpu();
        absmax.assign(a.data_ptr<float>(), a.data_ptr<float>() + nb);
      }
      for (int64_t i = 0; i < n; ++i) {
        const uint8_t byte = p[i / 2];
        out[i] = code[i % 2 ? byte & 15 : byte >> 4] * absmax[i / q.spec.block];
      }
      break;
    }
    case Method::Int8: {
      const at::Tensor d = q.data.cpu(), s = q.scale.cpu();
      for (int64_t r = 0; r < q.shape[0]; ++r)
        for (int64_t c = 0; c < q.shape[1]; ++c)
          out[r * q.shape[1] + c] = static_cast<float>(d.data_ptr<int8_t>()[r * q.shape[1] + c]) *
                                    s.data_ptr<float>()[r] * (1.0f / 127.0f);
      break;
    }
    case Method::RTN:
    case Method::GPTQ: {
      const at::Tensor d = q.data.cpu().contiguous(), s = q.scale.cpu(), z = q.zero.cpu(), g = q.g_idx.cpu();
      const int64_t rows = q.shape[0], cols = q.shape[1], ng = s.size(1), row_bytes = d.size(1);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const uint8_t* row = d.data_ptr<uint8_t>() + r * row_bytes;
          const int code = q.spec.bits <= 4 ? (c % 2 ? row[c / 2] & 15 : row[c / 2] >> 4) : row[c];
          const int64_t k = g.data_ptr<int32_t>()[c];
          out[r * cols + c] = s.data_ptr<float>()[r * ng + k] * (static_cast<float>(code) - z.data_ptr<float>()[r * ng + k]);
        }
      break;
    }
    case Method::None: ADD_FAILURE() << "no layout decoder for " << q.spec.str() << ": add one to layout_decode";
  }
  return at::tensor(out).view(q.shape);
}

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

class Formats : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST(FormatTable, EveryFormatHasSpecsHereAndNoneHasNoFormat) {
  for (const quant::Format& f : quant::formats()) {
    EXPECT_TRUE(kSpecs.count(f.name)) << "format '" << f.name << "' has no specs in test_formats.cpp's kSpecs";
    EXPECT_EQ(&quant::format_of(f.method), &f);
    EXPECT_EQ(quant::parse_quant_spec(kSpecs.count(f.name) ? kSpecs.at(f.name)[0].first : "fp32").method, f.method);
  }
  EXPECT_QERROR(quant::format_of(Method::None), "not quantized");
  EXPECT_QERROR(quant::quantize(weight(), quant::parse_quant_spec("gptq4")), "GPTQ needs calibration");
}

TEST_P(Formats, DequantizeFollowsTheStatedLayout) {
  const quant::QuantSpec spec = quant::parse_quant_spec(GetParam());
  const at::Tensor w = weight();
  const quant::QuantizedTensor q = make(w, spec);
  const at::Tensor deq = quant::dequantize(q, at::kFloat);
  ASSERT_EQ(deq.sizes(), w.sizes());
  const at::Tensor ref = layout_decode(q);
  EXPECT_LE((deq - ref).abs().max().item<double>(), 1e-6 * ref.abs().max().item<double>()) << spec.str();
  if (spec.method == Method::RTN || spec.method == Method::GPTQ) {  // the same float32 operations: the same bits
    EXPECT_TRUE(at::equal(deq, ref)) << spec.str();
    quant::QuantizedTensor bad = q;
    bad.g_idx = q.g_idx.clone();
    bad.g_idx[kCols - 1] = static_cast<int>(q.scale.size(1));
    EXPECT_QERROR(quant::dequantize(bad, at::kFloat), "g_idx", "outside");
  }
  const double err = rel_err(deq, w);
  EXPECT_LT(err, bound_of(GetParam())) << spec.str();
  EXPECT_GT(err, 0.0) << spec.str() << ": a lossy format returned the input exactly";
  EXPECT_EQ(quant::dequantize(q).scalar_type(), w.scalar_type());
}

TEST_P(Formats, PartsRoundTripAndDamageIsNamed) {
  const quant::QuantSpec spec = quant::parse_quant_spec(GetParam());
  const quant::QuantizedTensor q = make(weight(), spec);
  const auto parts = q.parts();
  const auto back = quant::QuantizedTensor::from_parts(spec, q.shape, q.dtype, parts, "w");
  EXPECT_TRUE(at::equal(quant::dequantize(back), quant::dequantize(q))) << spec.str();
  int64_t bytes = 0;
  for (const auto& p : parts) bytes += p.second.numel() * static_cast<int64_t>(p.second.element_size());
  EXPECT_EQ(q.nbytes(), bytes);
  for (size_t i = 0; i < parts.size(); ++i) {
    auto cut = parts;
    cut[i].second = cut[i].second.reshape({-1}).narrow(0, 0, cut[i].second.numel() - 1);
    EXPECT_QERROR(quant::QuantizedTensor::from_parts(spec, q.shape, q.dtype, cut, "w.safetensors"), "w.safetensors",
                  "'" + parts[i].first + "'");
    auto missing = parts;
    missing.erase(missing.begin() + static_cast<long>(i));
    EXPECT_QERROR(quant::QuantizedTensor::from_parts(spec, q.shape, q.dtype, missing, "w.safetensors"), "lacks",
                  "'" + parts[i].first + "'");
  }
}

TEST_P(Formats, LinearEqualsTheDequantizedProductWithItsGradient) {
  const quant::QuantSpec spec = quant::parse_quant_spec(GetParam());
  const quant::QuantizedTensor q = make(weight(), spec);
  const quant::Format& f = quant::format_of(spec.method);
  const at::Tensor deq = quant::dequantize(q, at::kFloat);
  at::manual_seed(9);
  const at::Tensor bias = at::randn({kRows});
  // The fused path serves up to 4 rows, and on the CPU in float32 up to kFusedRowsPackedCpu (32) for
  // the 4-bit and grouped formats, four rows a pass; more rows dequantize and multiply.
  for (int64_t rows : {1, 3, 4, 5, 9, 32, 33}) {
    const at::Tensor x = at::randn({rows, kCols});
    const at::Tensor y = f.linear(x, q, bias), ref = at::linear(x, deq, bias);
    ASSERT_EQ(y.sizes(), ref.sizes());
    // LLM.int8() also rounds x to int8 per row: its own tolerance
    const double tol = spec.method == Method::Int8 ? 0.03 : 1e-5;
    EXPECT_LT(rel_err(y, ref), tol) << spec.str() << " with " << rows << " rows";
    if (spec.method != Method::Int8 && rows <= quant::detail::kFusedRowsPackedCpu) {
      const at::Tensor fused = spec.method == Method::NF4 || spec.method == Method::FP4 ? quant::gemv_4bit(x, q)
                                                                                       : quant::gemv_grouped(x, q);
      EXPECT_TRUE(at::equal(f.linear(x, q, {}), fused)) << spec.str() << " with " << rows << " rows";
    }
  }
  const at::Tensor x = at::randn({2, kCols}).requires_grad_(true);
  f.linear(x, q, {}).sum().backward();
  ASSERT_TRUE(x.grad().defined()) << spec.str();
  EXPECT_TRUE(at::allclose(x.grad(), deq.sum(0).expand({2, kCols}), 1e-5, 1e-5)) << spec.str();
}

// |y - v| within half an ulp of `dt` at v plus the float32 accumulation's error (2^-20 of the sum
// of |terms|): what one rounding of a float32-accumulated product gives, and what accumulating or
// rounding in fp16/bf16 on the way exceeds.
::testing::AssertionResult rounded_once(const at::Tensor& y, const at::Tensor& exact, const at::Tensor& mag,
                                        at::ScalarType dt) {
  const int mant = dt == at::kHalf ? 10 : 7;
  const double min_exp = dt == at::kHalf ? -14 : -126;
  const at::Tensor e = at::clamp_min(at::floor(at::log2(exact.abs())), min_exp);
  const at::Tensor allowed = at::exp2(e - mant) * 0.5 + mag * std::ldexp(1.0, -20);
  const at::Tensor over = (y.to(at::kDouble) - exact).abs() - allowed;
  const double worst = over.max().item<double>();
  if (worst <= 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << (over > 0).sum().item<int64_t>() << " of " << y.numel()
                                       << " values beyond half an ulp, worst by " << worst;
}

// fp16/bf16 compute (the papers' default): the general path's product accumulates in float32 and
// rounds once, for few rows (ATen) and many (quant::wide_linear), as the dequantized weight in that
// dtype gives it; the gradient still reaches x.
TEST_P(Formats, Fp16AndBf16ProductsRoundOnceFromFloat32) {
  const quant::QuantSpec spec = quant::parse_quant_spec(GetParam());
  const quant::QuantizedTensor q = make(weight(), spec);
  const quant::Format& f = quant::format_of(spec.method);
  for (at::ScalarType dt : {at::kHalf, at::kBFloat16}) {
    const at::Tensor deq = quant::dequantize(q, dt).to(at::kDouble);
    at::manual_seed(10);
    const at::Tensor bias = at::randn({kRows}).to(dt);
    for (int64_t rows : {int64_t{3}, quant::kWideRows, int64_t{33}}) {
      const at::Tensor x = at::randn({rows, kCols}).to(dt);
      const at::Tensor y = f.linear(x, q, bias);
      ASSERT_EQ(y.scalar_type(), dt);
      const at::Tensor xd = x.to(at::kDouble), bd = bias.to(at::kDouble);
      if (spec.method == Method::Int8) {  // x rounded to int8 per row: LLM.int8()'s own tolerance
        EXPECT_LT(rel_err(y.to(at::kDouble), at::linear(xd, deq, bd)), 0.03) << c10::toString(dt) << ", " << rows;
        continue;
      }
      EXPECT_TRUE(rounded_once(y, at::linear(xd, deq, bd), at::linear(xd.abs(), deq.abs(), bd.abs()), dt))
          << spec.str() << ", " << c10::toString(dt) << ", " << rows << " rows";
    }
    const at::Tensor x = at::randn({quant::kWideRows, kCols}).to(dt).requires_grad_(true);
    f.linear(x, q, {}).sum().backward();
    ASSERT_TRUE(x.grad().defined()) << spec.str();
    EXPECT_TRUE(at::allclose(x.grad().to(at::kDouble), deq.sum(0).expand({quant::kWideRows, kCols}), 0.01, 0.01))
        << spec.str() << ", " << c10::toString(dt);
  }
}

// The dense layers' product (quant::dense_linear) in fp16/bf16: an LM-head-sized weight is widened
// a slice at a time (4 Mi values a slice; 8200 x 520 takes two, the second partial), and the result
// is the one rounding of the float32 product either way, with and without bias, for 3-D input.
TEST(Formats, DenseFp16AndBf16ProductsRoundOnceInSlices) {
  at::manual_seed(12);
  const at::Tensor wf = at::randn({8200, 520}) * 0.05, bf = at::randn({8200});
  for (at::ScalarType dt : {at::kHalf, at::kBFloat16}) {
    const at::Tensor w = wf.to(dt), b = bf.to(dt), wd = w.to(at::kDouble);
    for (bool with_bias : {true, false}) {
      const at::Tensor x = at::randn({2, 5, 520}).to(dt), xd = x.to(at::kDouble);
      const at::Tensor bd = with_bias ? b.to(at::kDouble) : at::zeros({8200}, at::kDouble);
      const at::Tensor y = quant::dense_linear(x, w, with_bias ? b : at::Tensor());
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 5, 8200}));
      EXPECT_TRUE(rounded_once(y, at::linear(xd, wd, bd), at::linear(xd.abs(), wd.abs(), bd.abs()), dt))
          << c10::toString(dt) << (with_bias ? " with bias" : " without bias");
    }
    // With gradient: the same values; the gradient reaching x sums g w over the same two slices.
    const at::Tensor x = at::randn({3, quant::kWideRows, 520}).to(dt).requires_grad_(true);
    const at::Tensor bg = b.clone().requires_grad_(true);
    const at::Tensor y = quant::dense_linear(x, w, bg);
    const at::Tensor xd = x.detach().to(at::kDouble), bd = b.to(at::kDouble);
    EXPECT_TRUE(rounded_once(y.detach(), at::linear(xd, wd, bd), at::linear(xd.abs(), wd.abs(), bd.abs()), dt));
    const at::Tensor g = at::randn({3, quant::kWideRows, 8200}).to(dt);
    y.backward(g);
    const at::Tensor gd = g.to(at::kDouble);
    EXPECT_TRUE(rounded_once(x.grad(), at::matmul(gd, wd), at::matmul(gd.abs(), wd.abs()), dt)) << c10::toString(dt);
    EXPECT_TRUE(rounded_once(bg.grad(), gd.sum(at::IntArrayRef{0, 1}), gd.abs().sum(at::IntArrayRef{0, 1}), dt))
        << c10::toString(dt);
    // and a weight that takes a gradient: g's columns against x
    const at::Tensor ws = w.narrow(0, 0, 40).clone().requires_grad_(true);
    const at::Tensor x2 = at::randn({quant::kWideRows, 520}).to(dt);
    quant::dense_linear(x2, ws).sum().backward();
    const at::Tensor x2d = x2.to(at::kDouble);
    EXPECT_TRUE(rounded_once(ws.grad(), x2d.sum(0).expand({40, 520}), x2d.abs().sum(0).expand({40, 520}), dt))
        << c10::toString(dt);
  }
}

// A decoding step's products of one input prepared as jobs and run in one parallel region (the
// model's q/k/v and gate/up) give each weight's output bit for bit as its own call does: the rows
// of the three weights (37 + 13 + 50, so thread ranges straddle them) land where they belong.
TEST(Formats, RowJobsTogetherEqualOneCallEach) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
    GTEST_SKIP() << "no AVX2 + FMA on this CPU: the fused CPU kernels (and so the jobs) are not used";
#else
  GTEST_SKIP() << "the fused CPU kernels are x86-64 only";
#endif
  constexpr int64_t kIn = 256;
  const std::vector<std::string> specs = {"nf4", "fp4:double_quant=0", "nf4:decode=q8", "rtn4:group=64",
                                          "rtn4:group=64,decode=q8", "rtn3:group=32,sym=0", "rtn8:group=128",
                                          "gptq4:group=32", "gptq4:group=64,decode=q8", "gptq4:group=128",
                                          "rtn2:group=0,sym=0"};
  at::manual_seed(11);
  const std::vector<at::Tensor> ws = {at::randn({37, kIn}), at::randn({13, kIn}), at::randn({50, kIn})};
  auto input = [](const at::Tensor& x) {
    quant::detail::StepInput in;
    in.x = x.data_ptr<float>(), in.n = x.size(0), in.cols = x.size(1);
    return in;
  };
  for (int64_t n : {1, 3}) {
    const at::Tensor x = at::randn({n, kIn});
    for (const auto& name : specs) {
      const quant::QuantSpec spec = quant::parse_quant_spec(name);
      const quant::Format& f = quant::format_of(spec.method);
      ASSERT_NE(f.row_job, nullptr) << name;
      std::vector<quant::QuantizedTensor> qs;
      std::vector<at::Tensor> ys;
      quant::detail::StepInput in = input(x);  // one input's prepared forms shared by the three jobs
      quant::detail::RowJob jobs[3];
      quant::detail::RowJob* ptrs[3];
      for (size_t i = 0; i < ws.size(); ++i) {
        qs.push_back(make(ws[i], spec));
        ys.push_back(at::full({n, ws[i].size(0)}, std::nanf("")));
        ASSERT_TRUE(f.row_job(in, qs[i], ys[i].data_ptr<float>(), &jobs[i])) << name << ": no fused kernel";
        ptrs[i] = &jobs[i];
      }
      quant::detail::run_row_jobs(ptrs, 3);
      for (size_t i = 0; i < ws.size(); ++i)
        EXPECT_TRUE(at::equal(ys[i], f.linear(x, qs[i], {}))) << name << ", weight " << i << ", " << n << " rows";
    }
    std::vector<at::Tensor> ys;
    quant::detail::StepInput in = input(x);
    quant::detail::RowJob jobs[3];
    quant::detail::RowJob* ptrs[3];
    for (size_t i = 0; i < ws.size(); ++i) {
      ys.push_back(at::full({n, ws[i].size(0)}, std::nanf("")));
      ASSERT_TRUE(quant::detail::dense_row_job(in, ws[i], ys[i].data_ptr<float>(), &jobs[i]));
      ptrs[i] = &jobs[i];
    }
    quant::detail::run_row_jobs(ptrs, 3);
    for (size_t i = 0; i < ws.size(); ++i)
      EXPECT_TRUE(at::equal(ys[i], quant::dense_linear(x, ws[i]))) << "dense, weight " << i << ", " << n << " rows";
  }
  // Not more than four rows, another width, a weight that needs a gradient, or int8 (no fused CPU
  // kernel): the usual path.
  quant::detail::RowJob job;
  float y[64 * 5];
  const at::Tensor x5 = at::randn({5, kIn}), x1 = at::randn({1, kIn + 32}), x2 = at::randn({1, kIn});
  quant::detail::StepInput in5 = input(x5), in1 = input(x1), in2 = input(x2);
  EXPECT_FALSE(quant::detail::dense_row_job(in5, ws[0], y, &job));
  EXPECT_FALSE(quant::detail::dense_row_job(in1, ws[0], y, &job));
  EXPECT_FALSE(quant::format_of(Method::NF4).row_job(in5, make(ws[0], quant::parse_quant_spec("nf4")), y, &job));
  EXPECT_FALSE(quant::format_of(Method::RTN).row_job(in1, make(ws[0], quant::parse_quant_spec("rtn4")), y, &job));
  const at::Tensor wg = ws[0].clone().requires_grad_(true);
  EXPECT_TRUE(quant::detail::dense_row_job(in2, ws[0], y, &job));
  EXPECT_FALSE(quant::detail::dense_row_job(in2, wg, y, &job));
  EXPECT_EQ(quant::format_of(Method::Int8).row_job, nullptr);
}

// The fused products' thread split (parallel_rows): every row in exactly one chunk, chunks in
// range and non-empty, whatever the thread count; and a product split over threads that take
// chunks as they finish equals the same product on one thread, bit for bit.
TEST(Formats, ParallelRowsCoverEveryRowOnce) {
#if defined(__x86_64__)
  const int threads = at::get_num_threads();
  struct Restore {  // the thread count, even when an assertion returns early
    int n;
    ~Restore() { at::set_num_threads(n); }
  } restore{threads};
  for (int nt : {1, 2, 3, 5}) {
    at::set_num_threads(nt);
    for (int64_t total : {0, 1, 16, 32, 33, 100, 961, 10000}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(total));
      for (auto& s : seen) s = 0;
      std::atomic<int> bad{0};
      quant::detail::parallel_rows(total, [&](int64_t b, int64_t e) {
        if (b < 0 || e > total || b >= e) ++bad;
        for (int64_t r = std::max<int64_t>(b, 0); r < std::min(e, total); ++r) ++seen[static_cast<size_t>(r)];
      });
      EXPECT_EQ(bad.load(), 0) << nt << " threads, " << total << " rows";
      for (int64_t r = 0; r < total; ++r)
        ASSERT_EQ(seen[static_cast<size_t>(r)].load(), 1) << nt << " threads, " << total << " rows, row " << r;
    }
  }
  at::manual_seed(5);
  const at::Tensor w = at::randn({1000, 256}), x = at::randn({2, 256});
  const quant::QuantizedTensor q = make(w, quant::parse_quant_spec("gptq4:group=64"));
  at::set_num_threads(1);
  const at::Tensor one = quant::format_of(Method::GPTQ).linear(x, q, {});
  at::set_num_threads(std::max(2, threads));
  EXPECT_TRUE(at::equal(one, quant::format_of(Method::GPTQ).linear(x, q, {})));
#else
  GTEST_SKIP() << "the fused CPU kernels are x86-64 only";
#endif
}

TEST_P(Formats, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device here; runs on a GPU machine";
  const quant::QuantSpec spec = quant::parse_quant_spec(GetParam());
  const at::Tensor w = weight();
  const quant::QuantizedTensor q = make(w, spec);
  const quant::QuantizedTensor qc = spec.method == Method::GPTQ ? q.to(at::kCUDA) : make(w.cuda(), spec);
  const at::Tensor dc = quant::dequantize(qc, at::kFloat).cpu(), d = quant::dequantize(q, at::kFloat);
  if (spec.method == Method::NF4 || spec.method == Method::FP4)
    EXPECT_TRUE(at::equal(dc, d)) << spec.str() << ": the 4-bit kernels are bit-exact on both devices";
  else
    EXPECT_LT(rel_err(dc, d), 1e-3) << spec.str();
  const at::Tensor x = at::randn({3, kCols});
  const quant::Format& f = quant::format_of(spec.method);
  EXPECT_LT(rel_err(f.linear(x.cuda(), qc, {}).cpu(), f.linear(x, q, {})), 1e-4) << spec.str();
}

INSTANTIATE_TEST_SUITE_P(AllFormats, Formats, ::testing::ValuesIn(all_specs()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s;
                           for (char c : i.param) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return s;
                         });
