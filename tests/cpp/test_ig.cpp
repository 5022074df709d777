// IntegratedGradients and SalientNeurons through the C++ API. The comparisons with Captum and the
// authors' scripts are in tests/python/test_integrated_gradients.py; here: the quadrature's
// exact values, completeness against a finite path integral the test computes itself, the last
// block's zero rows, and hand-checked salient sets.
#include <ATen/ATen.h>

#include <cmath>

#include "common.hpp"
#include "qinterp/analysis/integrated_gradients.hpp"
#include "qinterp/analysis/salient.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/text/tokenizer.hpp"

using namespace qinterp;

namespace {
std::vector<int64_t> on(const at::Tensor& b) {
  const at::Tensor n = at::nonzero(b).flatten().contiguous();
  return std::vector<int64_t>(n.data_ptr<int64_t>(), n.data_ptr<int64_t>() + n.numel());
}
}  // namespace

TEST(IntegratedGradients, QuadratureHandValues) {
  std::vector<double> a, w;
  analysis::ig_quadrature("gausslegendre", 2, &a, &w);  // nodes ±1/√3 on [-1, 1]
  EXPECT_NEAR(a[0], 0.5 * (1 - 1 / std::sqrt(3.0)), 1e-16);
  EXPECT_NEAR(a[1], 0.5 * (1 + 1 / std::sqrt(3.0)), 1e-16);
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  analysis::ig_quadrature("gausslegendre", 50, &a, &w);
  double total = 0, moment = 0;
  for (size_t i = 0; i < a.size(); ++i) total += w[i], moment += w[i] * std::pow(a[i], 7);
  EXPECT_NEAR(total, 1.0, 1e-15);
  EXPECT_NEAR(moment, 1.0 / 8, 1e-15);  // exact for polynomials of degree < 100
  analysis::ig_quadrature("riemann_trapezoid", 5, &a, &w);
  EXPECT_EQ(a, (std::vector<double>{0, 0.25, 0.5, 0.75, 1}));
  EXPECT_EQ(w, (std::vector<double>{0.1, 0.2, 0.2, 0.2, 0.1}));  // Captum's: 1/n, ends halved
  EXPECT_QERROR(analysis::ig_quadrature("riemann_left", 1, &a, &w), "n_steps >= 2");
  EXPECT_QERROR(analysis::ig_quadrature("simpson", 5, &a, &w), "unknown method");
}

TEST(IntegratedGradients, CompletenessAndLastBlock) {
  auto model = model::load_model(qt::stories("stories260K.bin"));
  auto tok = text::load_tokenizer(qt::stories("tok512.bin"));
  const at::Tensor ids = at::tensor(tok->encode("Once upon a time, there was a little girl"), at::kLong);
  analysis::IgOptions o;
  o.n_steps = 200;
  o.method = "riemann_middle";
  analysis::IntegratedGradients ig(model, {"blocks.1.mlp.hook_act", "blocks.4.mlp.hook_act"}, o);
  const auto r = ig.attribute(ids, 290);
  for (const auto& [hook, v] : r) {
    EXPECT_EQ(v.attributions.sizes(), (at::IntArrayRef{ids.size(0), 172}));
    EXPECT_EQ(v.attributions.scalar_type(), at::kFloat);
    // The path's endpoints: f(ids) and f with the activation at its baseline; a middle sum over
    // 200 steps of a smooth path misses their difference by O(1/n²).
    EXPECT_LT(std::abs(v.completeness_gap), 1e-3 * std::max(1.0, std::abs(v.f_input - v.f_hook_baseline))) << hook;
    EXPECT_NEAR(v.delta, v.sum - (v.f_input - v.f_baseline), 1e-9);
  }
  const at::Tensor last = r.at("blocks.4.mlp.hook_act").attributions;
  EXPECT_EQ(last.narrow(0, 0, ids.size(0) - 1).abs().max().item<float>(), 0.0f);  // after the final attention
  EXPECT_QERROR(ig.attribute(ids, std::vector<int64_t>{}), "empty");
  EXPECT_QERROR(analysis::IntegratedGradients(model, {"blocks.0.mlp.hook_act", "blocks.0.mlp.hook_act"}), "twice");
}

TEST(SalientNeurons, HandExamplePaperMode) {
  // Three prompt tokens, "a" twice: paper mode keeps the last "a" (row 2) in the first "a"'s place.
  const at::Tensor attr = at::tensor({1.0, 0.0, 0.0, 0.0,     // a (dropped: repeated later)
                                      0.0, -0.5, 0.2, 0.0,    // b
                                      0.0, 0.0, 0.1, 0.9},    // a
                                     at::kDouble)
                              .view({3, 4});
  analysis::SalientNeurons paper("paper");
  const at::Tensor s = paper.example_scores({attr}, {"a", "b", "a"});
  // sums per key: a = 1.0, b = -0.3 -> best = a's vector [0, 0, .1, .9] -> neuron 3
  EXPECT_EQ(on(s[0]), (std::vector<int64_t>{3}));
  // Σ|v| = [0, .5, .3, .9] -> /0.9: neuron 3 only (0.5/0.9 = 0.56)
  EXPECT_EQ(on(s[1]), (std::vector<int64_t>{3}));
  // signed max = [0, 0, .2, .9] -> neuron 3
  EXPECT_EQ(on(s[3]), (std::vector<int64_t>{3}));
  analysis::SalientNeurons pos("positions");
  const at::Tensor p = pos.example_scores({attr});
  // positions: sums 1.0, -0.3, 1.0 -> first max: position 0 -> neuron 0
  EXPECT_EQ(on(p[0]), (std::vector<int64_t>{0}));
  // Σ|v| = [1, .5, .3, .9] -> neurons 0 and 3 (0.9 > 0.7)
  EXPECT_EQ(on(p[1]), (std::vector<int64_t>{0, 3}));
  paper.update({attr}, {"a", "b", "a"});
  paper.skip();
  const auto r = paper.finalize();
  EXPECT_EQ(r.at("count").item<int64_t>(), 1);
  EXPECT_EQ(r.at("skipped").item<int64_t>(), 1);
  EXPECT_QERROR(analysis::SalientNeurons("bogus"), "mode");
}
