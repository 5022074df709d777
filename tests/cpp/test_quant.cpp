// Quantization: spec strings, the vectorized CPU kernels against reference.cpp, round-to-nearest
// and LLM.int8() against hand-checked values, QLinear gradients, GPTQ against round-to-nearest,
// quantized stories260K (generate, save, load), and the CUDA paths against the CPU where a GPU is.
// Agreement with bitsandbytes itself is tested from Python (tests/python/test_quant_bnb.py).
#include <ATen/ATen.h>

#include <random>

#include "common.hpp"
#include "qinterp/io/safetensors.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/model/quantize.hpp"
#include "qinterp/quant/dequantize.hpp"
#include "qinterp/quant/gptq.hpp"
#include "qinterp/quant/qlinear.hpp"
#include "qinterp/quant/quantize.hpp"
#include "qinterp/quant/reference.hpp"
#include "qinterp/quant/spec.hpp"

using namespace qinterp;
using quant::Method;
using quant::parse_quant_spec;

TEST(QuantSpec, DefaultsFollowThePapers) {
  EXPECT_EQ(parse_quant_spec("nf4").str(), "nf4:block=64,double_quant=1,compute=fp16");
  EXPECT_EQ(parse_quant_spec("int8").str(), "int8:threshold=6,compute=fp16");
  EXPECT_EQ(parse_quant_spec("gptq4").str(), "gptq4:group=128,sym=1,act_order=0,damp=0.01,calib=128,seqlen=256,compute=fp16");
  const auto s = parse_quant_spec("rtn4:group=32,sym=0,compute=bf16");
  EXPECT_EQ(s.method, Method::RTN);
  EXPECT_EQ(s.bits, 4);
  EXPECT_EQ(s.group, 32);
  EXPECT_FALSE(s.sym);
  for (const char* spec : {"nf4:block=128,double_quant=0", "fp4", "int8:threshold=0", "rtn8:group=0", "gptq3:act_order=1",
                           "gptq2:damp=0.1,calib=16,seqlen=64", "fp16", "bf16"})
    EXPECT_EQ(parse_quant_spec(parse_quant_spec(spec).str()).str(), parse_quant_spec(spec).str()) << spec;
}

TEST(QuantSpec, BadSpecsSayWhatIsValid) {
  EXPECT_QERROR(parse_quant_spec("nf5"), "unknown quantization spec 'nf5'", "valid specs: fp32, fp16");
  EXPECT_QERROR(parse_quant_spec("nf4:block=48"), "block=48", "power of two");
  EXPECT_QERROR(parse_quant_spec("nf4:group=4"), "has no parameter 'group'", "block, compute, decode, double_quant");
  EXPECT_QERROR(parse_quant_spec("gptq5"), "no such bit width");
  EXPECT_QERROR(parse_quant_spec("int8:threshold=abc"), "not a number");
  EXPECT_QERROR(parse_quant_spec("rtn4:sym=2"), "must be 0 or 1");
  EXPECT_QERROR(parse_quant_spec("fp16:block=64"), "takes no parameters");
  EXPECT_QERROR(parse_quant_spec("nf4:block"), "not key=value");
}

TEST(Quant4bit, VectorizedCpuEqualsReference) {
  for (Method m : {Method::NF4, Method::FP4})
    for (int64_t block : {32, 64, 256, 4096})
      for (int64_t n : {1, 2, 63, 64, 65, 1000, 64 * 257 + 3}) {
        at::manual_seed(n + block);
        at::Tensor x = at::randn({n}) * 3;
        if (n > block) x.narrow(0, 0, block).zero_();  // an all-zero block
        auto pa = quant::quantize_4bit(x, m, block);
        const auto t = m == Method::NF4 ? quant::ref::FourBit::NF4 : quant::ref::FourBit::FP4;
        std::vector<uint8_t> p((n + 1) / 2);
        std::vector<float> a((n + block - 1) / block), d(n);
        quant::ref::quantize_4bit(x.data_ptr<float>(), n, block, t, p.data(), a.data());
        ASSERT_EQ(0, std::memcmp(p.data(), pa.first.data_ptr<uint8_t>(), p.size())) << n << " " << block;
        ASSERT_EQ(0, std::memcmp(a.data(), pa.second.data_ptr<float>(), a.size() * 4));
        quant::ref::dequantize_4bit(p.data(), a.data(), n, block, t, d.data());
        const at::Tensor got = quant::dequantize_4bit(pa.first, pa.second, m, block, {n}, at::kFloat);
        ASSERT_EQ(0, std::memcmp(d.data(), got.data_ptr<float>(), n * 4));
      }
}

TEST(QuantQ8, ActivationsHandChecked) {
  // amax 127: d = 1 and q = x rounded half to even; an all-zero run: d = 0, q = 0
  std::vector<float> x(64, 0.0f);
  const float v[] = {127.0f, 63.5f, 62.5f, -0.5f, 1.5f, 2.5f, -2.5f, -126.6f};
  for (int i = 0; i < 8; ++i) x[static_cast<size_t>(i)] = v[i];
  std::vector<int8_t> q(64);
  std::vector<float> d(2);
  quant::ref::quantize_q8(x.data(), 64, q.data(), d.data());
  const int8_t want[] = {127, 64, 62, 0, 2, 2, -2, -127};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(q[static_cast<size_t>(i)], want[i]) << i;
  EXPECT_EQ(d[0], 1.0f);
  EXPECT_EQ(d[1], 0.0f);
  EXPECT_EQ(q[40], 0);
  EXPECT_EQ(quant::ref::fourbit_code_q8(quant::ref::FourBit::NF4)[0], -127);
  EXPECT_EQ(quant::ref::fourbit_code_q8(quant::ref::FourBit::NF4)[7], 0);
  EXPECT_EQ(quant::ref::fourbit_code_q8(quant::ref::FourBit::NF4)[15], 127);
  EXPECT_EQ(quant::ref::fourbit_code_q8(quant::ref::FourBit::NF4)[1], -88);  // 127 * -0.6961928 = -88.41
}

TEST(QuantQ8, KernelsEqualReference) {
  // the vectorized kernels (when the CPU has AVX2) against reference.cpp, within float32 rounding
  for (const char* spec : {"nf4:decode=q8", "fp4:block=32,double_quant=0,decode=q8", "rtn4:group=64,decode=q8",
                           "rtn3:group=128,sym=0,decode=q8", "rtn2:group=0,decode=q8"})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{9, 256}, {40, 576}, {3, 1024}}) {
      const auto sp = parse_quant_spec(spec);
      if (sp.method == Method::NF4 || sp.method == Method::FP4) {
        if (cols % sp.block) continue;
      }
      at::manual_seed(rows * cols);
      const at::Tensor w = at::randn({rows, cols}), x = at::randn({3, cols}) * 2;
      const auto qw = quant::quantize(w, sp);
      const bool four = sp.method == Method::NF4 || sp.method == Method::FP4;
      const at::Tensor y = four ? quant::gemv_4bit(x, qw) : quant::gemv_grouped(x, qw);
      std::vector<int8_t> q(static_cast<size_t>(cols));
      std::vector<float> d(static_cast<size_t>(cols / 32)), want(static_cast<size_t>(rows));
      for (int64_t k = 0; k < 3; ++k) {
        quant::ref::quantize_q8(x[k].data_ptr<float>(), cols, q.data(), d.data());
        if (four) {
          const at::Tensor absmax = quant::absmax_f32(qw).contiguous();
          quant::ref::gemv_4bit_q8(qw.data.data_ptr<uint8_t>(), absmax.data_ptr<float>(), rows, cols, sp.block,
                                   sp.method == Method::NF4 ? quant::ref::FourBit::NF4 : quant::ref::FourBit::FP4,
                                   q.data(), d.data(), want.data());
        } else {
          quant::ref::gemv_grouped_q8(qw.data.data_ptr<uint8_t>(), qw.scale.data_ptr<float>(),
                                      qw.zero.data_ptr<float>(), rows, cols, sp.group ? sp.group : cols, q.data(),
                                      d.data(), want.data());
        }
        // the exact product differs by the activations' rounding: far more than float32's
        const at::Tensor exact = at::matmul(x[k], quant::dequantize(qw).t());
        double far = 0.0;
        for (int64_t r = 0; r < rows; ++r) {
          const float got = y[k][r].item<float>();
          EXPECT_NEAR(got, want[static_cast<size_t>(r)], 1e-4 * (1.0 + std::fabs(want[static_cast<size_t>(r)])))
              << spec << " " << rows << "x" << cols << " row " << r;
          far = std::max(far, std::fabs(static_cast<double>(exact[r].item<float>()) - want[static_cast<size_t>(r)]));
        }
        EXPECT_GT(far, 1e-3) << spec << ": q8 should not equal the exact product";
      }
    }
  EXPECT_QERROR(parse_quant_spec("int8:decode=q8"), "has no parameter 'decode'");
  EXPECT_QERROR(parse_quant_spec("rtn8:decode=q8"), "has no parameter 'decode'");
  EXPECT_QERROR(parse_quant_spec("nf4:decode=fast"), "decode=fast must be exact or q8");
  EXPECT_EQ(parse_quant_spec("gptq4:decode=q8").str(),
            "gptq4:group=128,sym=1,act_order=0,damp=0.01,calib=128,seqlen=256,compute=fp16,decode=q8");
}

TEST(Quant4bit, CodesAndTies) {
  // 0.5 is exactly NF4 slot midway? No: ties only fall on midpoints; check the grid itself.
  const float* b = quant::ref::fourbit_bounds(quant::ref::FourBit::NF4);
  EXPECT_EQ(quant::ref::fourbit_encode(b[7], quant::ref::FourBit::NF4), 7);  // a midpoint goes to the lower code
  EXPECT_EQ(quant::ref::fourbit_encode(std::nextafter(b[7], 2.0f), quant::ref::FourBit::NF4), 8);
  EXPECT_EQ(quant::ref::fourbit_encode(1.0f, quant::ref::FourBit::NF4), 15);
  EXPECT_EQ(quant::ref::fourbit_encode(-1.0f, quant::ref::FourBit::FP4), 11);  // -1 = sign | 0b011
  EXPECT_EQ(quant::ref::fourbit_encode(0.0f, quant::ref::FourBit::FP4), 0);
  EXPECT_EQ(quant::ref::fourbit_encode(1e-4f, quant::ref::FourBit::FP4), 8);  // the second zero code
  const at::Tensor m = quant::dynamic_map();
  EXPECT_EQ(m.numel(), 256);
  EXPECT_TRUE(at::equal(m, std::get<0>(m.sort())));
  EXPECT_FLOAT_EQ(m[255].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(m[0].item<float>(), -0.99296875f);
}

TEST(Quant, DoubleQuantizedAbsmaxRoundTrips) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({300, 256}) * 0.05;
  const auto q = quant::quantize(w, parse_quant_spec("nf4"));
  const auto q0 = quant::quantize(w, parse_quant_spec("nf4:double_quant=0"));
  EXPECT_EQ(q.absmax.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(q.data, q0.data));  // the codes do not depend on how absmax is stored
  const at::Tensor a = quant::absmax_f32(q);
  EXPECT_LT(((a - q0.absmax).abs() / q0.absmax).max().item<double>(), 0.01);
  EXPECT_LT(q.nbytes(), q0.nbytes());
  const at::Tensor d = quant::dequantize(q);
  EXPECT_EQ(d.sizes(), w.sizes());
  EXPECT_LT((d - w).norm().item<double>() / w.norm().item<double>(), 0.12);  // NF4's error on Gaussians ~ 0.1
}

TEST(Quant, RoundToNearestHandChecked) {
  const at::Tensor w = at::tensor({0.0f, 1.0f, 2.0f, 3.0f}).view({1, 4});
  auto q = quant::quantize(w, parse_quant_spec("rtn2:group=0,sym=0"));  // scale 1, zero 0: exact
  EXPECT_TRUE(at::equal(quant::dequantize(q), w));
  // GPTQ's symmetric grid mirrors only when a row has negatives: here scale 1, zero 2, codes clamp at 3
  q = quant::quantize(w, parse_quant_spec("rtn2:group=0,sym=1"));
  EXPECT_TRUE(at::equal(quant::dequantize(q), at::tensor({0.0f, 1.0f, 1.0f, 1.0f}).view({1, 4})));
  // with negatives: xmax = 3, xmin = -3, scale 2, zero 2; -0.5 rounds half to even (to 0)
  q = quant::quantize(at::tensor({-3.0f, -1.0f, 0.0f, 2.0f}).view({1, 4}), parse_quant_spec("rtn2:group=0,sym=1"));
  EXPECT_TRUE(at::equal(quant::dequantize(q), at::tensor({-4.0f, 0.0f, 0.0f, 2.0f}).view({1, 4})));
  EXPECT_FLOAT_EQ(q.scale.item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(q.zero.item<float>(), 2.0f);
  // groups of 2 columns: each gets its own grid
  q = quant::quantize(at::tensor({0.0f, 1.0f, 10.0f, 13.0f}).view({1, 4}), parse_quant_spec("rtn8:group=2,sym=0"));
  EXPECT_EQ(q.scale.sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_NEAR(quant::dequantize(q)[0][3].item<float>(), 13.0f, 13.0f / 255);
}

TEST(Quant, Int8LinearHandChecked) {
  // W rows [1, -2] and [4, 0.5]; x rows [2, 1] and [-1, 8 (outlier at threshold 6)]
  const at::Tensor w = at::tensor({1.0f, -2.0f, 4.0f, 0.5f}).view({2, 2});
  auto q = quant::quantize(w, parse_quant_spec("int8:threshold=6,compute=fp32"));
  EXPECT_TRUE(at::equal(q.data, at::tensor(std::vector<int8_t>{64, -127, 127, 16}).view({2, 2})));  // round(127 * w / rowmax)
  const at::Tensor x = at::tensor({2.0f, 1.0f, -1.0f, 8.0f}).view({2, 2});
  const at::Tensor y = quant::int8_linear(x, q);
  // column 1 holds an outlier: it goes through float against the dequantized weight column
  const at::Tensor wd = quant::dequantize(q);
  const auto r = quant::int8_vectorwise_quant(x, 6.0);
  EXPECT_TRUE(at::equal(r.outlier_cols, at::tensor({int64_t(1)})));
  const at::Tensor expect0 = (r.q.select(1, 0).to(at::kFloat).unsqueeze(1) * q.data.select(1, 0).to(at::kFloat).unsqueeze(0)) *
                                 (r.absmax.unsqueeze(1) * q.scale.unsqueeze(0)) / (127.0 * 127.0) +
                             x.select(1, 1).unsqueeze(1) * wd.select(1, 1).unsqueeze(0);
  // bitsandbytes scales by its constant 6.200124e-05 (1/127² is 6.2000124e-05): 1.8e-5 relative
  EXPECT_LT((y - expect0).abs().max().item<double>(), 5e-5 * expect0.abs().max().item<double>());
  EXPECT_LT((y - at::matmul(x, w.t())).abs().max().item<double>(), 0.1);
}

TEST(QLinear, GradientsReachTheInputNotTheWeight) {
  at::manual_seed(5);
  const at::Tensor w = at::randn({16, 64});
  for (const char* spec : {"nf4:compute=fp32", "int8:compute=fp32", "rtn4:group=32,compute=fp32"}) {
    quant::QLinear lin(quant::quantize(w, parse_quant_spec(spec)));
    at::Tensor x = at::randn({3, 64}).set_requires_grad(true);
    at::Tensor y = lin.forward(x);
    y.pow(2).sum().backward();
    ASSERT_TRUE(x.grad().defined()) << spec;
    const at::Tensor wd = quant::dequantize(lin.weight(), at::kFloat);
    const at::Tensor expect = at::matmul(2 * y.detach(), wd);
    EXPECT_LT((x.grad() - expect).abs().max().item<double>(), 1e-4) << spec;
    for (const auto& part : lin.weight().parts()) {  // the weight's storage takes no part in autograd
      EXPECT_FALSE(part.second.requires_grad()) << spec << " " << part.first;
      EXPECT_FALSE(part.second.grad().defined()) << spec << " " << part.first;
    }
  }
}

namespace {
std::shared_ptr<model::Model> stories(const std::string& quant = "") {
  model::LoadOptions o;
  o.quant = quant;
  return model::load_model(qt::stories("stories260K.bin"), o);
}
at::Tensor prompt() { return at::tensor(std::vector<int64_t>{1, 403, 407, 261, 378}).view({1, 5}); }
}  // namespace

TEST(QuantModel, Stories260KQuantizedStaysClose) {
  const at::Tensor ref = stories()->forward(prompt());
  for (const char* spec : {"nf4", "fp4", "int8", "rtn8", "rtn4"}) {
    auto m = stories(spec);
    EXPECT_EQ(m->quant_spec().str(), parse_quant_spec(spec).str());
    const at::Tensor lg = m->forward(prompt());
    const double rel = (lg - ref).norm().item<double>() / ref.norm().item<double>();
    EXPECT_LT(rel, std::string(spec).find('8') != std::string::npos ? 0.02 : 0.2) << spec;
    EXPECT_LT(m->parameter_bytes(), stories()->parameter_bytes()) << spec;
  }
}

TEST(QuantModel, SaveAndLoadGiveIdenticalLogits) {
  qt::TempDir dir;
  for (const char* spec : {"nf4", "int8", "rtn4:group=32,sym=0"}) {
    auto m = stories(spec);
    model::save_model(*m, dir.file(spec));
    auto back = model::load_model(dir.file(spec));
    EXPECT_EQ(back->quant_spec().str(), m->quant_spec().str());
    EXPECT_TRUE(at::equal(back->forward(prompt()), m->forward(prompt()))) << spec;
    model::LoadOptions o;
    o.quant = "fp4";
    EXPECT_QERROR(model::load_model(dir.file(spec), o), "already quantized");
  }
}

TEST(QuantModel, DamagedQuantizedCheckpointGivesError) {
  qt::TempDir dir;
  auto m = stories("nf4");
  model::save_model(*m, dir.path().string());
  // drop one part: rewrite the file without an absmax tensor
  io::SafetensorsCheckpoint ck(dir.file("model.safetensors"));
  std::vector<io::TensorView> views;
  for (const auto& n : ck.names())
    if (n != "model.layers.0.mlp.up_proj.weight.absmax") views.push_back(ck.get(n));
  auto meta = ck.metadata();
  io::write_safetensors(dir.file("bad.safetensors"), views, meta);
  EXPECT_QERROR(model::load_model(dir.file("bad.safetensors")), "bad.safetensors", "up_proj.weight", "absmax");
}

TEST(QuantModel, GptqBeatsRoundToNearestOnARealLayer) {
  // Calibration: the model's own greedy continuation of a few prompts (real activations).
  auto m = stories();
  model::GenerateOptions go;
  go.use_default_stop = false;
  go.max_new_tokens = 59;
  at::Tensor calib = m->generate(prompt(), go);
  go.max_new_tokens = 62;
  calib = at::cat({calib, m->generate(at::tensor(std::vector<int64_t>{1, 365}).view({1, 2}), go)});
  // Inputs of layer 2's down projection
  quant::GptqHessian h(m->config().intermediate_size);
  at::Tensor xs;
  const model::Pass p = m->begin(calib);
  at::Tensor x = m->embed(p);
  for (int64_t l = 0; l < 3; ++l)
    x = m->run_layer(l, x, p, [&](int64_t layer, int which, const at::Tensor& in) {
      if (layer == 2 && which == model::kDown) {
        h.add(in);
        xs = in.reshape({-1, in.size(-1)});
      }
    });
  const at::Tensor w = m->linear_weight(2, model::kDown);
  for (const char* bits : {"4", "3", "2"}) {
    const auto g = quant::gptq_quantize(w, h.matrix(), parse_quant_spec(std::string("gptq") + bits + ":group=32"));
    const auto r = quant::quantize(w, parse_quant_spec(std::string("rtn") + bits + ":group=32"));
    const double eg = (at::matmul(xs, w.t()) - at::matmul(xs, quant::dequantize(g).t())).norm().item<double>();
    const double er = (at::matmul(xs, w.t()) - at::matmul(xs, quant::dequantize(r).t())).norm().item<double>();
    EXPECT_LT(eg, er) << bits << " bits: gptq " << eg << " rtn " << er;
  }
  // whole-model GPTQ, layer by layer
  auto mq = stories();
  model::quantize_gptq(*mq, parse_quant_spec("gptq4:group=32"), calib);
  const at::Tensor ref = m->forward(prompt());
  EXPECT_LT((mq->forward(prompt()) - ref).norm().item<double>() / ref.norm().item<double>(), 0.2);
  model::LoadOptions o;
  o.quant = "gptq4";
  EXPECT_QERROR(model::load_model(qt::stories("stories260K.bin"), o), "needs calibration");
}

TEST(QuantCuda, TensorsOnGpuMatchCpu) {
  if (!quant::cuda_built() || !at::hasCUDA()) GTEST_SKIP() << "SKIPPED: no CUDA device here; runs on a GPU machine";
  at::manual_seed(9);
  for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const at::Tensor w = (at::randn({512, 1024}) * 0.1).to(dt);
    for (const char* spec : {"nf4", "fp4:block=128,double_quant=0"}) {
      const auto qc = quant::quantize(w, parse_quant_spec(spec));
      const auto qg = quant::quantize(w.cuda(), parse_quant_spec(spec));
      EXPECT_TRUE(at::equal(qc.data, qg.data.cpu())) << spec;
      EXPECT_TRUE(at::equal(quant::dequantize(qc), quant::dequantize(qg).cpu())) << spec;
      // single-token product through the fused kernel vs dequantize + matmul
      const at::Tensor x = at::randn({1, 1024}).to(dt);
      const at::Tensor ref = at::matmul(x.to(at::kFloat), quant::dequantize(qc, at::kFloat).t());
      const at::Tensor y = quant::gemv_4bit(x.cuda(), qg).cpu().to(at::kFloat);
      EXPECT_LT((y - ref).norm().item<double>() / ref.norm().item<double>(), dt == at::kFloat ? 1e-5 : 1e-2) << spec;
    }
  }
  model::LoadOptions o;
  o.quant = "nf4";
  o.device = "cuda";
  auto mg = model::load_model(qt::stories("stories260K.bin"), o);
  auto mc = stories("nf4");
  const at::Tensor lg = mg->forward(prompt()).cpu(), lc = mc->forward(prompt());
  EXPECT_LT((lg - lc).norm().item<double>() / lc.norm().item<double>(), 1e-2);
  model::GenerateOptions go;
  go.max_new_tokens = 20;
  EXPECT_EQ(mg->generate(prompt(), go).sizes(), mc->generate(prompt(), go).sizes());
}

// Constant tables, the shared-memory opt-in and occupancy are per device: a kernel set up on the
// first GPU must still be right on the second. Needs two GPUs.
TEST(QuantCuda, SecondDeviceGetsItsOwnSetup) {
  if (!quant::cuda_built() || !at::hasCUDA() || at::getNumGPUs() < 2)
    GTEST_SKIP() << "SKIPPED: needs two CUDA devices; runs on a multi-GPU machine";
  at::manual_seed(10);
  // 8192 columns: the staged x and the code table need more than 48 KiB of shared memory
  const at::Tensor w = (at::randn({256, 8192}) * 0.1).to(at::kHalf);
  const at::Tensor x = at::randn({1, 8192}).to(at::kHalf);
  const auto spec = parse_quant_spec("nf4");
  const auto qc = quant::quantize(w, spec);
  const at::Tensor ref = at::matmul(x.to(at::kFloat), quant::dequantize(qc, at::kFloat).t());
  for (const char* dev : {"cuda:0", "cuda:1"}) {  // device 0 first, so that a once-only setup would be its
    const auto qg = quant::quantize(w.to(at::Device(dev)), spec);
    EXPECT_TRUE(at::equal(qc.data, qg.data.cpu())) << dev;
    EXPECT_TRUE(at::equal(qc.absmax, qg.absmax.cpu())) << dev;
    const at::Tensor y = quant::gemv_4bit(x.to(at::Device(dev)), qg).cpu().to(at::kFloat);
    EXPECT_LT((y - ref).norm().item<double>() / ref.norm().item<double>(), 1e-2) << dev;
  }
  const auto q1 = quant::quantize(w.to(at::Device("cuda:1")), spec);
  try {
    quant::gemv_4bit(x.to(at::Device("cuda:0")), q1);
    ADD_FAILURE() << "a weight on another device was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:1"), std::string::npos) << e.what();
  }
}
