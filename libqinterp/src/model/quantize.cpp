#include "qinterp/model/quantize.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <map>

#include "qinterp/error.hpp"
#include "qinterp/quant/gptq.hpp"

namespace qinterp::model {

void quantize_gptq(Model& model, const quant::QuantSpec& spec, const at::Tensor& calib,
                   const std::function<void(int64_t, int64_t)>& progress) {
  c10::NoGradGuard ng;
  if (spec.method != quant::Method::GPTQ) fail("quantize_gptq: spec '", spec.str(), "' is not GPTQ");
  if (model.quant_spec().quantized()) fail("quantize_gptq: the model is already quantized (", model.quant_spec().str(), ")");
  if (!calib.defined() || calib.dim() != 2 || calib.size(0) == 0 || calib.size(1) == 0)
    fail("quantize_gptq: calibration must be a non-empty [sequences, tokens] id tensor");
  // The calibration actually used is what the saved spec records.
  quant::QuantSpec used = spec;
  used.calib = static_cast<int>(calib.size(0));
  used.seqlen = static_cast<int>(calib.size(1));
  const int64_t layers = model.config().num_layers, batch = 8;
  // Hidden states entering the current block, per calibration batch.
  std::vector<Pass> passes;
  std::vector<at::Tensor> xs;
  for (int64_t s = 0; s < calib.size(0); s += batch) {
    passes.push_back(model.begin(calib.narrow(0, s, std::min(batch, calib.size(0) - s))));
    xs.push_back(model.embed(passes.back()));
  }
  for (int64_t l = 0; l < layers; ++l) {
    std::map<int, quant::GptqHessian> hs;
    const LinearObserver obs = [&](int64_t, int which, const at::Tensor& in) {
      auto it = hs.find(which);
      if (it == hs.end()) it = hs.emplace(which, quant::GptqHessian(in.size(-1), in.device())).first;
      it->second.add(in);
    };
    for (size_t b = 0; b < xs.size(); ++b) model.run_layer(l, xs[b], passes[b], obs);
    for (auto& [which, h] : hs) {
      const at::Tensor w = model.linear_weight(l, which);
      const at::Tensor bias = model.linear_bias(l, which);
      auto q = quant::gptq_quantize(w, h.matrix(), used).to(w.device());
      model.set_linear(l, which, std::make_shared<const quant::QLinear>(q, bias.defined() ? bias : at::Tensor()));
    }
    for (size_t b = 0; b < xs.size(); ++b) xs[b] = model.run_layer(l, xs[b], passes[b]);
    if (progress) progress(l + 1, layers);
  }
}

void quantize_model(Model& model, const quant::QuantSpec& spec, const at::Tensor& calib,
                    const std::function<void(int64_t, int64_t)>& progress) {
  if (!spec.quantized()) fail("quantize_model: '", spec.str(), "' is not a quantized format");
  if (spec.method == quant::Method::GPTQ) {
    if (!calib.defined())
      fail("quantize_model: ", spec.str(), " needs calibration token ids (", spec.calib, " sequences of ",
           spec.seqlen, " tokens); pass them, e.g. calibration_windows(ids, mask, ", spec.calib, ", ", spec.seqlen, ")");
    quantize_gptq(model, spec, calib, progress);
  } else {
    model.quantize(spec, progress);
  }
}

namespace {

// MT19937 seeded as CPython's random.seed(int) (init_by_array over the seed's 32-bit words), with
// getrandbits and randbelow as CPython computes them.
class PyRandom {
 public:
  explicit PyRandom(uint64_t seed) {
    std::vector<uint32_t> key;
    for (uint64_t s = seed; s != 0; s >>= 32) key.push_back(static_cast<uint32_t>(s));
    if (key.empty()) key.push_back(0);
    mt_[0] = 19650218u;
    for (int i = 1; i < N; ++i) mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<uint32_t>(i);
    int i = 1;
    size_t j = 0;
    for (size_t k = std::max<size_t>(N, key.size()); k > 0; --k) {
      mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
      if (++i >= N) mt_[0] = mt_[N - 1], i = 1;
      if (++j >= key.size()) j = 0;
    }
    for (int k = N - 1; k > 0; --k) {
      mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
      if (++i >= N) mt_[0] = mt_[N - 1], i = 1;
    }
    mt_[0] = 0x80000000u;
  }
  uint32_t next() {
    if (idx_ >= N) {
      for (int k = 0; k < N; ++k) {
        const uint32_t y = (mt_[k] & 0x80000000u) | (mt_[(k + 1) % N] & 0x7fffffffu);
        mt_[k] = mt_[(k + M) % N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
      }
      idx_ = 0;
    }
    uint32_t y = mt_[idx_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
  }
  uint64_t getrandbits(int k) {  // 1 <= k <= 64: 32-bit words, least significant first
    uint64_t r = 0;
    for (int shift = 0; k > 0; shift += 32, k -= 32) {
      uint32_t w = next();
      if (k < 32) w >>= 32 - k;
      r |= static_cast<uint64_t>(w) << shift;
    }
    return r;
  }
  uint64_t randbelow(uint64_t n) {  // n >= 1
    int k = 0;
    while (k < 64 && (n >> k) != 0) ++k;
    uint64_t r = getrandbits(k);
    while (r >= n) r = getrandbits(k);
    return r;
  }

 private:
  static constexpr int N = 624, M = 397;
  uint32_t mt_[N];
  int idx_ = N;
};

}  // namespace

at::Tensor random_calibration_windows(const at::Tensor& ids, int64_t n, int64_t seqlen, uint64_t seed) {
  if (!ids.defined() || ids.dim() != 1) fail("random_calibration_windows: ids must be a 1-D token stream");
  if (n < 1 || seqlen < 1) fail("random_calibration_windows: need n >= 1 and seqlen >= 1, got ", n, " and ", seqlen);
  const int64_t len = ids.size(0);
  if (len <= seqlen)
    fail("random_calibration_windows: the calibration text is ", len, " tokens; windows of ", seqlen,
         " need more than that (give more text or a smaller seqlen)");
  at::Tensor flat = ids.to(at::kCPU, at::kLong).contiguous();
  PyRandom rng(seed);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < n; ++i)
    rows.push_back(flat.narrow(0, static_cast<int64_t>(rng.randbelow(static_cast<uint64_t>(len - seqlen))), seqlen));
  return at::stack(rows);
}

at::Tensor calibration_windows(const at::Tensor& ids, const at::Tensor& mask, int64_t n, int64_t seqlen) {
  at::Tensor flat = mask.defined() ? ids.masked_select(mask.ne(0)) : ids.reshape({-1});
  flat = flat.to(at::kCPU, at::kLong);
  const int64_t have = flat.numel() / seqlen;
  if (have < 1) fail("calibration_windows: ", flat.numel(), " tokens do not fill one window of ", seqlen);
  const int64_t m = std::min(n, have);
  return flat.narrow(0, 0, m * seqlen).view({m, seqlen}).clone();
}

}  // namespace qinterp::model
