// qinterp::analysis: hand-checked values, direct float64 evaluations of the definitions on real
// stories260K activations, merge/state properties, and the same accumulators on a GPU.
#include <ATen/ATen.h>

#include <cmath>
#include <iostream>

#include "common.hpp"
#include "qinterp/analysis/calibration.hpp"
#include "qinterp/analysis/perplexity.hpp"
#include "qinterp/analysis/clustering.hpp"
#include "qinterp/analysis/correlation.hpp"
#include "qinterp/analysis/drift.hpp"
#include "qinterp/analysis/neurons.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/text/tokenizer.hpp"

using namespace qinterp;
using namespace qinterp::analysis;

namespace {

// Real activations: stories260K's blocks.L.mlp.hook_act over a few prompts, real tokens only.
at::Tensor stories_acts(int64_t layer) {
  auto m = model::load_model(qt::stories("stories260K.bin"));
  auto tok = load_tokenizer(qt::stories("tok512.bin"));
  std::vector<at::Tensor> out;
  model::Hooks hooks;
  hooks.add("blocks." + std::to_string(layer) + ".mlp.hook_act", [&](const at::Tensor& a, const model::HookContext& c) {
    out.push_back(a.index({c.mask}).clone());
    return std::nullopt;
  });
  for (const char* p : {"Once upon a time, there was a little girl named Lily.", "The cat sat on the mat and looked at the sun.",
                        "Tom and his mom went to the park. They saw a big red ball and played all day long."}) {
    auto ids = tok->encode(p);
    m->forward(at::tensor(ids).unsqueeze(0), {}, &hooks);
  }
  return at::cat(out).to(at::kDouble);
}

at::Tensor direct_corr(const at::Tensor& x) {
  at::Tensor c = x - x.mean(0);
  at::Tensor cov = c.t().mm(c);
  at::Tensor d = cov.diagonal().rsqrt();
  return cov * d.unsqueeze(1) * d.unsqueeze(0);
}

}  // namespace

TEST(DeadNeurons, BandIsStrictAndMaskSkipsPadding) {
  DeadNeurons d;
  // neuron 0 touches 0.1 (not strictly inside), neuron 1 stays inside, neuron 2 only leaves the
  // band on a padded token
  at::Tensor act = at::tensor({0.1f, 0.05f, 5.0f, -0.09f, 0.0f, 0.0f}).view({1, 2, 3});
  at::Tensor mask = at::tensor({0, 1}).gt(0).view({1, 2});
  d.update(act, mask);
  EXPECT_EQ(d.tokens(), 1);
  d.update(act.select(1, 0));  // now the 5.0 token counts as real
  auto r = d.finalize();
  EXPECT_TRUE(at::equal(r["dead"], at::tensor({0, 1, 0}).gt(0)));
  EXPECT_EQ(r["count"].item<int64_t>(), 1);
  EXPECT_TRUE(at::equal(r["outside"], at::tensor({int64_t{1}, int64_t{0}, int64_t{1}})));
  EXPECT_DOUBLE_EQ(r["max"][0].item<double>(), 0.1f);
  EXPECT_QERROR(DeadNeurons(0.1, -0.1), "empty");
  // an activation without neurons is refused by name, not left to a torch reshape error
  NeuronStats s;
  Correlation c;
  EXPECT_QERROR(d.update(at::zeros({3, 0})), "DeadNeurons", "no neurons");
  EXPECT_QERROR(s.update(at::zeros({2, 3, 0})), "NeuronStats", "no neurons");
  EXPECT_QERROR(c.update(at::zeros({0, 0})), "Correlation", "no neurons");
}

TEST(DeadNeurons, NonFiniteIsRefusedWithHookAndToken) {
  DeadNeurons d;
  d.set_label("blocks.1.mlp.hook_act");
  d.update(at::zeros({3, 4}));
  at::Tensor x = at::zeros({2, 4});
  x[1][2] = -INFINITY;
  EXPECT_QERROR(d.update(x), "blocks.1.mlp.hook_act", "-Inf at token 4", "neuron 2");
  EXPECT_EQ(d.tokens(), 3);
}

TEST(NeuronStats, MatchesDirectFloat64) {
  const at::Tensor x = stories_acts(2);
  NeuronStats s;
  for (const auto& part : x.split(37)) s.update(part.to(at::kFloat));
  auto r = s.finalize();
  const at::Tensor xf = x.to(at::kFloat).to(at::kDouble);
  EXPECT_TRUE(at::allclose(r["mean"], xf.mean(0), 1e-12, 1e-15));
  EXPECT_TRUE(at::allclose(r["variance"], xf.var(0, /*unbiased=*/false), 1e-10, 1e-15));
  EXPECT_TRUE(at::equal(r["absmax"], xf.abs().amax(0)));
  EXPECT_EQ(r["histogram"].sum().item<int64_t>() + r["underflow"].sum().item<int64_t>() +
                r["overflow"].sum().item<int64_t>(),
            x.numel());
}

TEST(Correlation, MatchesDirectFloat64OnStories260K) {
  const at::Tensor x = stories_acts(1);
  Correlation::Options o;
  o.tile = 64;  // several tiles, a ragged last one (172 neurons)
  o.chunk = 50;
  Correlation c(o);
  for (const auto& part : x.split(71)) c.update(part.to(at::kFloat));
  const at::Tensor ref = direct_corr(x.to(at::kFloat).to(at::kDouble));
  EXPECT_LT((c.matrix() - ref).abs().max().item<double>(), 1e-6);
  auto r = c.finalize();
  const int64_t n = x.size(1);
  EXPECT_EQ(r["pairs_total"].item<int64_t>(), n * (n - 1) / 2);
  EXPECT_EQ(r["histogram"].sum().item<int64_t>(), n * (n - 1) / 2);
  // histogram of the direct |r|, pairs i < j
  at::Tensor iu = at::triu_indices(n, n, 1);
  at::Tensor v = ref.index({iu[0], iu[1]}).abs();
  at::Tensor h = at::histc(v.clamp_max(1.0), 10, 0, 1);
  const int64_t diff = (h.to(at::kLong) - r["histogram"]).abs().sum().item<int64_t>();
  EXPECT_EQ(diff, 0) << "near-edge pairs: "
                     << ((v * 10 - (v * 10).round()).abs() < 1e-5).sum().item<int64_t>();
}

TEST(Correlation, MergeAndRestoreEqualOnePass) {
  at::manual_seed(4);
  at::Tensor x = at::randn({900, 70}, at::kDouble) + at::randn({70}, at::kDouble) * 10;
  Correlation::Options o;
  o.tile = 32;
  Correlation one(o), a(o), b(o);
  auto parts = x.split(100);
  for (size_t i = 0; i < parts.size(); ++i) {
    one.update(parts[i]);
    (i % 2 ? b : a).update(parts[i]);
  }
  a.merge(b);
  EXPECT_LT((a.matrix() - one.matrix()).abs().max().item<double>(), 1e-12);
  EXPECT_TRUE(at::equal(a.finalize()["histogram"], one.finalize()["histogram"]));
  Correlation c(o);
  c.restore(one.state());
  EXPECT_TRUE(at::equal(c.matrix(), one.matrix()));
  Correlation::Options other = o;
  other.tile = 16;
  Correlation d(other);
  EXPECT_QERROR(d.restore(one.state()), "tile");
  DeadNeurons dn;
  EXPECT_QERROR(dn.restore(one.state()), "cannot restore a DeadNeurons");
}

// The AVX2 kernel (default on the CPU for float32) against the ATen products it replaces:
// ragged panels (n not a multiple of 16, tiles not aligned to panels), chunks of one pass and
// of several (256 tokens a pass), constant neurons, and a mean far from zero.
// A saved state comes from a file that may be damaged or written by something else: restore()
// checks every entry (presence, shape, dtype, non-negative counts) and says which is wrong,
// with qinterp::Error; the accumulator is left as it was.
TEST(AccumulatorState, RestoreRefusesDamagedStatesAndKeepsItsOwn) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({40, 12});
  Correlation corr;
  DeadNeurons dead;
  NeuronStats stats;
  Drift drift;
  Calibration cal;
  Perplexity ppl;
  corr.update(x);
  dead.update(x);
  stats.update(x);
  drift.update(x, x + 0.1);
  cal.update(at::rand({30}, at::kDouble), at::rand({30}).gt(0.5));
  ppl.update(at::randn({2, 5, 7}), at::randint(0, 7, {2, 5}));
  for (Accumulator* acc : std::vector<Accumulator*>{&corr, &dead, &stats, &drift, &cal, &ppl}) {
    const State good = acc->state();
    const Tensors before = acc->finalize();
    int cases = 0;
    for (const auto& [name, t] : good.tensors) {
      std::vector<std::pair<std::string, at::Tensor>> bad = {{"missing", at::Tensor()},
                                                             {"a wrong shape", at::zeros({t.numel() + 1, 2}, t.options())}};
      if (t.dim() > 0)  // arrays: counts must be integers and values floating point (settings are numbers)
        bad.push_back({"a wrong dtype", t.scalar_type() == at::kBool            ? t.to(at::kFloat)
                                        : at::isFloatingType(t.scalar_type()) ? t.to(at::kByte)
                                                                               : t.to(at::kDouble)});
      if (at::isIntegralType(t.scalar_type(), false)) bad.push_back({"negative counts", -t - 1});
      for (const auto& [how, v] : bad) {
        State s = good;
        if (v.defined()) s.tensors[name] = v;
        else s.tensors.erase(name);
        try {
          acc->restore(s);
          ADD_FAILURE() << acc->kind() << ": restored with '" << name << "' " << how;
        } catch (const Error& e) {
          const std::string m = e.what();
          EXPECT_NE(m.find(acc->kind()), std::string::npos) << m;
          EXPECT_NE(m.find(name.substr(name.find('.') + 1)), std::string::npos) << how << ": " << m;
        }
        ++cases;
        const Tensors after = acc->finalize();  // unchanged by the failed restore
        for (const auto& [k, r] : before)
          EXPECT_TRUE(at::equal(r, after.at(k)) || (r.is_floating_point() && at::allclose(r, after.at(k), 0, 0, true)))
              << acc->kind() << " '" << k << "' changed after a refused restore (" << name << ", " << how << ")";
      }
    }
    EXPECT_GE(cases, 5) << acc->kind();  // Perplexity has two entries, the others more
    acc->restore(good);  // and a good state still restores
  }
}

// Float32 products lose neurons whose values are tiny (their squares underflow near 1e-38) or huge
// (overflow near 3e38). Scaling a neuron by a power of two must leave |r| bit for bit unchanged,
// on both paths; values of every magnitude must match float64.
TEST(Correlation, NeuronsOfAnyMagnitude) {
  at::manual_seed(12);
  const int64_t n = 45, tokens = 1300;  // three panels of 16, the last ragged
  at::Tensor base = at::randn({tokens, n}) + at::randn({tokens, 3}).mm(at::randn({3, n})) * 2 + at::randn({1, n}) * 3;
  base.select(1, 5).fill_(0.75f);  // constant: excluded with or without scaling
  const int exps[] = {-80, -60, -45, 0, 45, 60, 80};
  at::Tensor pow2 = at::empty({n});
  for (int64_t j = 0; j < n; ++j) pow2[j] = std::ldexp(1.0f, exps[j % 7]);
  const at::Tensor scaled = base * pow2;  // exact: every value stays a normal float
  ASSERT_TRUE(at::equal(scaled / pow2, base));
  for (bool kernel : {true, false}) {
    SCOPED_TRACE(kernel ? "cpu kernel" : "ATen path");
    Correlation::Options o;
    o.tile = 16;
    o.chunk = 300;
    o.cpu_kernel = kernel;
    Correlation plain(o), big(o);
    for (const auto& part : base.split(450)) plain.update(part);
    for (const auto& part : scaled.split(450)) big.update(part);
    EXPECT_TRUE(at::equal(plain.matrix().nan_to_num(7), big.matrix().nan_to_num(7)));
    auto rp = plain.finalize(), rb = big.finalize();
    EXPECT_TRUE(at::equal(rp["histogram"], rb["histogram"]));
    EXPECT_EQ(rb["pairs_excluded"].item<int64_t>(), n - 1);
    // powers of ten, and a neuron whose centred values overflow float32 (float64 for that chunk)
    at::Tensor tens = at::empty({n});
    for (int64_t j = 0; j < n; ++j) tens[j] = std::pow(10.0f, static_cast<float>(exps[j % 7]) * 0.37f);
    at::Tensor wide = base * tens;
    wide.select(1, 7).copy_(at::where(at::arange(tokens) % 4 == 0, -3.0e38, 3.0e38).to(at::kFloat));
    Correlation any(o);
    for (const auto& part : wide.split(450)) any.update(part);
    const at::Tensor ref = direct_corr(wide.to(at::kDouble));
    EXPECT_LT((any.matrix() - ref).abs().nan_to_num(0).max().item<double>(), 1e-6);
    EXPECT_EQ(any.finalize()["pairs_excluded"].item<int64_t>(), n - 1);
  }
}

TEST(Correlation, CpuKernelMatchesAtenReference) {
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
    std::cout << "[ NOTE     ] this CPU has no AVX2+FMA: both sides run the ATen path\n";
  struct Case {
    int64_t n, tile, chunk, split;
  };
  at::manual_seed(11);
  for (const Case& k : {Case{1, 256, 2048, 5}, Case{5, 4, 3, 7}, Case{37, 10, 300, 97}, Case{172, 64, 700, 650},
                        Case{300, 256, 2048, 1100}, Case{40, 16, 2048, 513}}) {
    SCOPED_TRACE("n=" + std::to_string(k.n) + " tile=" + std::to_string(k.tile) + " chunk=" + std::to_string(k.chunk));
    at::Tensor x = (at::randn({1300, k.n}) + at::randn({1, k.n}) * 20).to(at::kFloat);
    at::Tensor mix = at::randn({k.n, std::min<int64_t>(k.n, 4)});
    x = x + at::randn({1300, mix.size(1)}).mm(mix.t()) * 2;
    if (k.n > 3) x.select(1, 2).fill_(3.5f);  // a constant neuron
    Correlation::Options o;
    o.tile = k.tile;
    o.chunk = k.chunk;
    o.top_k = 7;
    o.cluster_threshold = 0.5;
    Correlation fast(o);
    o.cpu_kernel = false;
    Correlation ref(o);
    for (const auto& part : x.split(k.split)) {
      fast.update(part);
      ref.update(part);
    }
    const auto sf = fast.state(), sr = ref.state();
    // means (of values near 20-40): both sides centre in float32, then sum the centred values, the
    // kernel in float64 and the reference in float32 blocks of 64
    const at::Tensor direct = x.to(at::kDouble).mean(0);
    EXPECT_LT((sf.tensors.at("mean") - direct).abs().max().item<double>(), 2e-7);
    EXPECT_LT((sr.tensors.at("mean") - direct).abs().max().item<double>(), 1e-6);
    at::Tensor d = at::empty({k.n}, at::kDouble);
    for (int64_t a = 0; a * k.tile < k.n; ++a) {
      const at::Tensor& t = sr.tensors.at("m2_" + std::to_string(a));
      d.narrow(0, a * k.tile, t.size(0)).copy_(t.diagonal());
    }
    for (int64_t a = 0; a * k.tile < k.n; ++a) {
      const std::string name = "m2_" + std::to_string(a);
      const at::Tensor& tf = sf.tensors.at(name);
      const at::Tensor& tr = sr.tensors.at(name);
      ASSERT_EQ(tf.sizes(), tr.sizes()) << name;
      // error relative to the norms sqrt(M2_ii M2_jj): float32 products, 1e-6 is 10x their rounding
      at::Tensor da = d.narrow(0, a * k.tile, tr.size(0)).unsqueeze(1), db = d.narrow(0, a * k.tile, tr.size(1));
      at::Tensor scale = (da * db).sqrt().clamp_min(1e-30);
      EXPECT_LT(((tf - tr).abs() / scale).max().item<double>(), 1e-6) << name;
      // the stored diagonal block is symmetric, as the full product would make it
      at::Tensor diag = tf.narrow(1, 0, tf.size(0));
      EXPECT_TRUE(at::equal(diag, diag.t())) << name;
    }
    EXPECT_LT((fast.matrix() - ref.matrix()).abs().nan_to_num(0).max().item<double>(), 1e-6);
    auto rf = fast.finalize(), rr = ref.finalize();
    EXPECT_TRUE(at::equal(rf["histogram"], rr["histogram"]));
    EXPECT_TRUE(at::equal(rf["zero_variance"], rr["zero_variance"]));
    // finalize's one-pass scan on the CPU against the ATen steps: top pairs and clusters
    if (k.n > 1) {
      EXPECT_LT((rf["top_values"] - rr["top_values"]).abs().max().item<double>(), 1e-6);
      EXPECT_TRUE(at::equal(rf["top_i"], rr["top_i"]));
      EXPECT_TRUE(at::equal(rf["top_j"], rr["top_j"]));
    }
    EXPECT_TRUE(at::equal(rf["cluster"], rr["cluster"]));
    EXPECT_EQ(rf["independent_neurons"].item<int64_t>(), rr["independent_neurons"].item<int64_t>());
  }
}

TEST(Clustering, AverageLinkageHandExample) {
  // points 0, 0.1, 0.25, 1.0 on a line: merges at 0.1 ({0,1}), 0.2 ({0,1},2) and 0.8833 (all)
  const std::vector<double> d = {0.1, 0.25, 1.0, 0.15, 0.9, 0.75};
  EXPECT_EQ(average_linkage_clusters(d, 4, 0.5), (std::vector<int64_t>{0, 0, 0, 1}));
  EXPECT_EQ(average_linkage_clusters(d, 4, 0.15), (std::vector<int64_t>{0, 0, 1, 2}));
  EXPECT_EQ(average_linkage_clusters(d, 4, 0.19), (std::vector<int64_t>{0, 0, 1, 2}));
  EXPECT_EQ(average_linkage_clusters(d, 4, 0.2), (std::vector<int64_t>{0, 0, 0, 1}));
  EXPECT_EQ(average_linkage_clusters(d, 4, 0.9), (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_QERROR(average_linkage_clusters({0.1}, 4, 0.5), "expected n(n-1)/2");
}

TEST(Calibration, EceAndAceHandComputed) {
  Calibration c;
  c.update(at::tensor({0.05, 0.15, 0.15, 0.25, 0.3, 0.95, 0.95, 0.95}),
           at::tensor({0, 1, 0, 0, 1, 1, 1, 0}).gt(0));
  auto r = c.finalize();
  EXPECT_NEAR(r["ece"].item<double>(), 2.05 / 8, 1e-15);
  // ACE, 10 bins over 8 examples: 8 bins of one, sorted by (confidence, correct):
  // .05/0 .15/0 .15/1 .25/0 .3/1 .95/0 .95/1 .95/1 -> gaps .05 .15 .85 .25 .7 .95 .05 .05
  EXPECT_NEAR(r["ace"].item<double>(), (0.05 + 0.15 + 0.85 + 0.25 + 0.7 + 0.95 + 0.05 + 0.05) / 8, 1e-15);
  EXPECT_NEAR(r["accuracy"].item<double>(), 0.5, 1e-15);
}

TEST(Perplexity, NonOverlappingWindowsEqualDirectSum) {
  auto m = model::load_model(qt::stories("stories260K.bin"));
  auto tok = load_tokenizer(qt::stories("tok512.bin"));
  auto ids = tok->encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.");
  at::Tensor x = at::tensor(ids);
  Perplexity p;
  perplexity(*m, x, x.size(0), x.size(0), p);
  at::Tensor lp = m->forward(x.unsqueeze(0))[0].to(at::kDouble).log_softmax(-1);
  double nll = 0;
  for (int64_t t = 0; t + 1 < x.size(0); ++t) nll -= lp[t][ids[t + 1]].item<double>();
  EXPECT_EQ(p.tokens(), x.size(0) - 1);
  EXPECT_NEAR(p.nll(), nll, 1e-5 * nll);
  EXPECT_QERROR(perplexity(*m, x, 8, 9, p), "stride");
}

TEST(AnalysisCuda, GpuMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "SKIPPED: no CUDA device here; runs on a GPU machine";
  at::manual_seed(2);
  at::Tensor x = at::randn({3000, 700}) * at::rand({700}) + at::randn({700}) * 3;
  x.narrow(1, 0, 100).add_(x.narrow(1, 100, 100) * 0.8);
  Correlation cc, cg;
  DeadNeurons dc, dg;
  NeuronStats sc, sg;
  Drift fc, fg;
  for (const auto& part : x.split(1000)) {
    at::Tensor g = part.cuda(), q = (part * 1.01).cuda();
    cc.update(part);
    cg.update(g);
    dc.update(part * 0.03);
    dg.update(g * 0.03);
    sc.update(part);
    sg.update(g);
    fc.update(part, part * 1.01);
    fg.update(g, q);
  }
  EXPECT_LT((cc.matrix() - cg.matrix()).abs().max().item<double>(), 1e-6);
  EXPECT_TRUE(at::equal(dc.finalize()["dead"], dg.finalize()["dead"]));
  EXPECT_TRUE(at::equal(dc.finalize()["outside"], dg.finalize()["outside"]));
  EXPECT_TRUE(at::allclose(sc.finalize()["variance"], sg.finalize()["variance"], 1e-10, 0));
  EXPECT_TRUE(at::equal(sc.finalize()["histogram"], sg.finalize()["histogram"]));
  EXPECT_TRUE(at::allclose(fc.finalize()["correlation"], fg.finalize()["correlation"], 1e-10, 0));
  const int64_t hd = (cc.finalize()["histogram"] - cg.finalize()["histogram"]).abs().sum().item<int64_t>();
  EXPECT_LE(hd, 4) << "histogram bins differ by more than rounding at bin edges";
}
